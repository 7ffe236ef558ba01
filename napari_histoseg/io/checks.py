"""One place that checks numbers, sizes and paths given to napari-histoseg.

Every entry point (CLI, API, server, widgets) checks what it is given here, so that a bad value
gets the same clear message everywhere and never a meaningless result:

* :func:`check_int` / :func:`check_float`: finite, of the right type, in range. A bool is not a
  number; NaN and infinity are refused; the message names the field and the allowed range.
* :func:`int_arg` / :func:`float_arg`: the same as ``argparse`` ``type=`` callables.
* :func:`check_pixels`: an image size checked against a pixel budget *before* anything is
  allocated, with a message that names the size and says how to read less (a region or a
  pyramid level).
* :func:`inside`: a path resolved and required to stay inside a folder (``..``, absolute paths
  and symlinks that leave it are refused).

:class:`InputError` is a ``ValueError``; the CLI turns it into ``histoseg: <message>`` and exit
code 2, the server into a 4xx with the message, a widget into a napari notification.

No napari or Qt imports here.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from pathlib import Path

__all__ = [
    "InputError",
    "check_int",
    "check_float",
    "int_arg",
    "float_arg",
    "MAX_PIXELS",
    "max_pixels",
    "check_pixels",
    "inside",
]

#: Default pixel budget of one in-memory image (height x width): 2^30 px is 3 GiB as RGB uint8.
#: Override with the environment variable ``HISTOSEG_MAX_PIXELS``.
MAX_PIXELS = 1 << 30


class InputError(ValueError):
    """A value, size or path given to napari-histoseg cannot be used; the message says why."""


def _range_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '≥'} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '≤'} {hi:g}")
    return " and ".join(parts)


def _check_range(x, name, lo, hi, lo_open, hi_open, kind):
    bad = (lo is not None and (x < lo or (lo_open and x == lo))) or (
        hi is not None and (x > hi or (hi_open and x == hi)))
    if bad:
        raise InputError(f"{name} must be {kind} {_range_text(lo, hi, lo_open, hi_open)}; got {x:g}")
    return x


def check_int(value, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``; refuses bools, fractions, NaN, infinity and text.

    >>> check_int(512, "--tile", lo=64)
    512
    >>> check_int(7, "--tile", lo=64)
    Traceback (most recent call last):
    ...
    napari_histoseg.io.checks.InputError: --tile must be an integer ≥ 64; got 7
    """
    if isinstance(value, bool) or value is None:
        raise InputError(f"{name} must be an integer; got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InputError(f"{name} must be an integer; got {value!r}") from None
    elif isinstance(value, numbers.Integral):
        value = int(value)
    elif isinstance(value, numbers.Real):
        if not math.isfinite(value) or value != int(value):
            raise InputError(f"{name} must be an integer; got {value!r}")
        value = int(value)
    else:
        raise InputError(f"{name} must be an integer; got {type(value).__name__}")
    return _check_range(value, name, lo, hi, False, False, "an integer")


def check_float(value, name: str, *, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float in the range; ``lo_open``/``hi_open`` exclude the bound.

    >>> check_float("0.25", "--mpp", lo=0, lo_open=True, hi=100)
    0.25
    >>> check_float(float("nan"), "--threshold", lo=0, hi=1)
    Traceback (most recent call last):
    ...
    napari_histoseg.io.checks.InputError: --threshold must be a finite number; got nan
    """
    if isinstance(value, bool) or value is None:
        raise InputError(f"{name} must be a number; got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InputError(f"{name} must be a number; got {value!r}") from None
    elif isinstance(value, numbers.Real):
        value = float(value)
    else:
        raise InputError(f"{name} must be a number; got {type(value).__name__}")
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number; got {value!r}")
    return _check_range(value, name, lo, hi, lo_open, hi_open, "a number")


def _arg(check, **bounds):
    def parse(text):
        try:
            return check(text, "the value", **bounds)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("the value must be", "must be")) from None

    parse.__name__ = "integer" if check is check_int else "number"   # argparse names it in errors
    return parse


def int_arg(lo: int | None = None, hi: int | None = None):
    """An ``argparse`` ``type=`` that accepts integers in ``[lo, hi]`` only."""
    return _arg(check_int, lo=lo, hi=hi)


def float_arg(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
              hi_open: bool = False):
    """An ``argparse`` ``type=`` that accepts finite numbers in the range only."""
    return _arg(check_float, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


def max_pixels() -> int:
    """The pixel budget: ``HISTOSEG_MAX_PIXELS`` if set to a positive integer, else :data:`MAX_PIXELS`."""
    env = os.environ.get("HISTOSEG_MAX_PIXELS")
    if env:
        try:
            value = int(env)
            if value > 0:
                return value
        except ValueError:
            pass
    return MAX_PIXELS


def check_pixels(shape, what: str = "the image", *, budget: int | None = None,
                 hint: str = "read a region or a lower pyramid level instead") -> None:
    """Refuse a (height, width[, ...]) size over the pixel budget before anything is allocated.

    ``what`` names the thing in the message ("slide.tif level 0"); ``hint`` says how to read less.
    """
    try:
        h, w = (int(s) for s in tuple(shape)[:2])
    except (TypeError, ValueError):
        raise InputError(f"{what} has no usable size: {shape!r}") from None
    if h <= 0 or w <= 0:
        raise InputError(f"{what} is empty ({w} x {h} px)")
    budget = budget or max_pixels()
    if h * w > budget:
        gib = h * w * 3 / 2 ** 30
        raise InputError(
            f"{what} is {w} x {h} px ({h * w / 1e6:,.0f} megapixels, {gib:,.1f} GiB as RGB), over the "
            f"limit of {budget / 1e6:,.0f} megapixels for one image in memory; {hint} "
            "(or raise the limit with HISTOSEG_MAX_PIXELS)")


def inside(root, relative, what: str = "path") -> Path:
    """``root / relative`` resolved, refused unless it stays inside ``root`` (symlinks followed).

    Absolute paths, ``..`` that climbs out and links that point elsewhere are all refused with a
    message that names the path as given, not where it leads.
    """
    root_resolved = Path(root).resolve()
    if not isinstance(relative, (str, os.PathLike)) or not str(relative):
        raise InputError(f"{what} must be a non-empty relative path; got {relative!r}")
    rel = Path(relative)
    if rel.is_absolute():
        raise InputError(f"{what} {str(relative)!r} must be relative to its folder, not absolute")
    target = (root_resolved / rel).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise InputError(f"{what} {str(relative)!r} leads outside its folder")
    return target
