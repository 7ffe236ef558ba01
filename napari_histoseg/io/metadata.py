"""Pixel size (microns per pixel) and magnification from image metadata.

Sources, in order of trust:

1. Aperio SVS image description (``MPP = 0.499``, ``AppMag = 20``).
2. OME-XML ``Pixels/@PhysicalSizeX`` (+ ``PhysicalSizeXUnit``, default µm).
3. TIFF ``XResolution`` / ``ResolutionUnit`` (centimeter or inch), and the
   PNG ``pHYs`` / JPEG JFIF density, but only when the value is plausible for
   a microscope (:data:`MPP_RANGE`): ordinary 72 or 96 dpi images give None.

No napari or Qt imports here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

__all__ = [
    "MPP_RANGE",
    "plausible_mpp",
    "aperio_metadata",
    "ome_mpp",
    "resolution_mpp",
    "dpi_mpp",
]

#: Microns per pixel accepted from resolution tags (scanners are 0.1-1 µm/px;
#: 72 dpi = 352.8 µm/px is a screen default, not a microscope).
MPP_RANGE = (0.05, 20.0)

_UNIT_TO_UM = {
    "pm": 1e-6,
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "μm": 1.0,  # Greek mu
    "um": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def plausible_mpp(mpp) -> float | None:
    """Return `mpp` as float if it lies in :data:`MPP_RANGE`, else None."""
    try:
        mpp = float(mpp)
    except (TypeError, ValueError):
        return None
    if MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        return mpp
    return None


def _parse_svs_description(description: str) -> dict:
    try:  # tifffile's parser, where this version has it
        from tifffile.tifffile import svs_description_metadata

        return svs_description_metadata(description)
    except ImportError:  # pragma: no cover - older/newer tifffile layout
        pass
    result = {"Header": description.split("|")[0].strip()}
    for item in description.split("|")[1:]:
        if "=" in item:
            key, value = item.split("=", 1)
            result[key.strip()] = value.strip()
    return result


def aperio_metadata(description: str) -> dict:
    """Read mpp and magnification from an Aperio SVS image description.

    Parameters
    ----------
    description : str
        The ImageDescription of the first page of an SVS file.

    Returns
    -------
    meta : dict
        ``{"mpp": float | None, "objective_power": float | None}``.

    Examples
    --------
    >>> aperio_metadata("Aperio Image Library v11|AppMag = 20|MPP = 0.4990")
    {'mpp': 0.499, 'objective_power': 20.0}
    """
    out = {"mpp": None, "objective_power": None}
    if not description or not description.startswith("Aperio"):
        return out
    try:
        meta = _parse_svs_description(description)
    except ValueError:
        return out
    for key, name in (("MPP", "mpp"), ("AppMag", "objective_power")):
        try:
            value = float(meta[key])
        except (KeyError, TypeError, ValueError):
            continue
        if value > 0:
            out[name] = value
    return out


def ome_mpp(ome_xml: str, image_index: int = 0) -> float | None:
    """Read the pixel size in µm from OME-XML ``PhysicalSizeX``.

    Parameters
    ----------
    ome_xml : str
        The OME-XML document (``TiffFile.ome_metadata``).
    image_index : int, optional
        Which ``Image`` element to read.

    Returns
    -------
    mpp : float or None
        Microns per pixel along x (the mean of x and y when both are given
        and differ), or None when absent or in an unknown unit.

    Examples
    --------
    >>> xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
    ...        '<Image><Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm"/>'
    ...        '</Image></OME>')
    >>> ome_mpp(xml)
    0.25
    """
    try:
        root = ET.fromstring(ome_xml)
    except (ET.ParseError, TypeError):
        return None
    images = [el for el in root if el.tag.rsplit("}", 1)[-1] == "Image"]
    if not images:
        return None
    image = images[min(image_index, len(images) - 1)]
    pixels = next((el for el in image if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{axis}")
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        if value is None or unit not in _UNIT_TO_UM:
            continue
        try:
            size = float(value) * _UNIT_TO_UM[unit]
        except ValueError:
            continue
        if size > 0:
            sizes.append(size)
    if not sizes:
        return None
    return sizes[0] if len(sizes) == 1 else (sizes[0] + sizes[1]) / 2


def resolution_mpp(page) -> float | None:
    """Pixel size in µm from TIFF XResolution/ResolutionUnit, if plausible.

    Parameters
    ----------
    page : tifffile.TiffPage
        The full-resolution page.

    Returns
    -------
    mpp : float or None
        None when the unit is missing/"none", or the value lies outside
        :data:`MPP_RANGE` (e.g. the 72-dpi default of many writers).
    """
    tags = page.tags
    xres = tags.get("XResolution")
    unit = tags.get("ResolutionUnit")
    if xres is None or unit is None:
        return None
    try:
        num, den = xres.value
        pixels_per_unit = num / den
        unit = int(unit.value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if pixels_per_unit <= 0:
        return None
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimeter
    if um_per_unit is None:
        return None
    return plausible_mpp(um_per_unit / pixels_per_unit)


def dpi_mpp(dpi) -> float | None:
    """Pixel size in µm from a (x, y) dots-per-inch pair, if plausible.

    Used for PNG pHYs and JPEG JFIF densities as Pillow reports them.

    Examples
    --------
    >>> dpi_mpp((72, 72)) is None
    True
    >>> round(dpi_mpp((50800, 50800)), 3)
    0.5
    """
    try:
        x = float(dpi[0])
    except (TypeError, ValueError, IndexError):
        return None
    if x <= 0:
        return None
    return plausible_mpp(25400.0 / x)
