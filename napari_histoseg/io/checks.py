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
* :func:`check_memory` / :func:`batch_bytes`: a working-memory estimate (a batch of patches
  through a network) checked against a memory budget before anything runs.
* :func:`field` / :func:`check_type`: JSON read against a documented schema, with messages
  that name the field (``dataset.json: tiles[3].image must be a string; got null``).

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
    "check_magnification",
    "magnification_arg",
    "MPP_AT_1X",
    "MAX_PIXELS",
    "max_pixels",
    "check_pixels",
    "inside",
    "MAX_MEMORY_FRACTION",
    "memory_budget",
    "batch_bytes",
    "check_memory",
    "check_type",
    "field",
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
        got = f"{x:g}" if isinstance(x, float) else (str(x) if len(str(x)) <= 30 else f"an integer of {len(str(x))} digits")
        raise InputError(f"{name} must be {kind} {_range_text(lo, hi, lo_open, hi_open)}; got {got}")
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


#: µm per pixel at 1x by the scanners' convention (20x ~ 0.5 µm/px, 40x ~ 0.25 µm/px).
MPP_AT_1X = 10.0


def check_magnification(value, name: str = "magnification") -> float:
    """An objective magnification as a number, ``"20x"``, ``"20X"`` or ``"20"``, in 1..200;
    ``MPP_AT_1X / magnification`` is its usual µm per pixel.

    >>> check_magnification("20x"), MPP_AT_1X / check_magnification(40)
    (20.0, 0.25)
    """
    if isinstance(value, str):
        value = value.strip().lower().removesuffix("x").strip()
    return check_float(value, name, lo=1, hi=200)


def magnification_arg():
    """An ``argparse`` ``type=`` for :func:`check_magnification`."""
    return _arg(lambda v, n: check_magnification(v, n))


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


#: Default working-memory budget: this fraction of the machine's physical memory.
#: Override with ``HISTOSEG_MAX_MEMORY_GB``.
MAX_MEMORY_FRACTION = 0.5


def memory_budget() -> int:
    """Bytes one job may plan to use: ``HISTOSEG_MAX_MEMORY_GB`` if set, else half the RAM."""
    env = os.environ.get("HISTOSEG_MAX_MEMORY_GB")
    if env:
        try:
            value = float(env)
            if math.isfinite(value) and value > 0:
                return int(value * 2 ** 30)
        except ValueError:
            pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        total = 16 * 2 ** 30
    return int(total * MAX_MEMORY_FRACTION)


def batch_bytes(batch: int, height: int, width: int | None = None, *,
                floats_per_pixel: float | None = None, training: bool = False) -> int:
    """A rough upper estimate of the memory a batch of (height x width) patches takes in a
    convolutional network: ``floats_per_pixel`` float32 values per input pixel (default about
    64 for inference, where activations are freed layer by layer, and 400 for training, which
    keeps every activation for the backward pass plus gradients and the optimiser's state;
    a U-Net with a MobileNetV2 encoder)."""
    width = height if width is None else width
    per_px = floats_per_pixel if floats_per_pixel is not None else (400.0 if training else 64.0)
    return int(batch) * int(height) * int(width) * int(per_px * 4)


def check_memory(nbytes: int, what: str, *, budget: int | None = None,
                 hint: str = "use a smaller patch or batch size") -> None:
    """Refuse a job whose estimated memory ``nbytes`` is over the budget, with a message that
    names the estimate, the budget and ``hint``."""
    budget = budget or memory_budget()
    if nbytes > budget:
        raise InputError(
            f"{what} needs about {nbytes / 2 ** 30:,.1f} GiB of memory, over the budget of "
            f"{budget / 2 ** 30:,.1f} GiB; {hint} (or raise the budget with HISTOSEG_MAX_MEMORY_GB)")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object", type(None): "null"}


def _json_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_type(value, types, name: str, *, error=InputError):
    """``value`` if it is of one of ``types`` (a type or a tuple), else ``error`` naming the field.

    ``int`` does not accept a bool; ``float`` accepts an int (JSON has one number type) but not
    NaN or infinity.

    >>> check_type([1], int, "dataset.json: version")
    Traceback (most recent call last):
    ...
    napari_histoseg.io.checks.InputError: dataset.json: version must be an integer; got a list
    """
    types = types if isinstance(types, tuple) else (types,)
    ok = False
    for t in types:
        if t in (int, float) and isinstance(value, bool):
            continue
        if t is float and isinstance(value, (int, float)):
            ok = isinstance(value, int) or math.isfinite(value)
        elif isinstance(value, t):
            ok = True
        if ok:
            break
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise error(f"{name} must be {wanted}; got {_json_name(value)}")
    return value


_MISSING = object()


def field(record, key: str, types, where: str, *, default=_MISSING, error=InputError):
    """``record[key]`` checked with :func:`check_type`; ``default`` when absent (or required
    when no default is given). ``where`` names the record in the message
    (``"dataset.json: tiles[3]"`` gives ``dataset.json: tiles[3].image``; a ``where`` ending in
    a colon, ``"dataset.json:"``, gives ``dataset.json: version``); ``record`` itself must be a
    JSON object."""
    if not isinstance(record, dict):
        raise error(f"{where} must be an object; got {_json_name(record)}")
    if key not in record:
        if default is _MISSING:
            raise error(f"{where} has no {key!r}")
        return default
    name = f"{where} {key}" if where.endswith(":") else f"{where}.{key}"
    return check_type(record[key], types, name, error=error)
