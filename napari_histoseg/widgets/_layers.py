"""Small helpers shared by the widgets: reading image layers, placing result layers."""

from __future__ import annotations

import hashlib

import numpy as np
from napari.layers import Image, Labels


def level_data(layer: Image, level: int = 0):
    """The array of one pyramid level of an image layer (level 0 for a plain image)."""
    if layer.multiscale:
        return layer.data[level]
    return layer.data


def level_downsample(layer: Image, level: int) -> float:
    """How many level-0 pixels one pixel of ``level`` spans."""
    if not layer.multiscale or level == 0:
        return 1.0
    return float(layer.data[0].shape[0]) / float(layer.data[level].shape[0])


def visible_region(layer: Image, level: int = 0) -> tuple[int, int, int, int]:
    """``(y, x, h, w)`` in pixels of ``level`` of what the canvas shows of ``layer`` now."""
    corners = np.asarray(layer.corner_pixels, float)[:, -2:]
    shown = layer.data_level if layer.multiscale else 0
    factor = level_downsample(layer, shown) / level_downsample(layer, level)
    shape = level_data(layer, level).shape[:2]
    lo = np.clip(np.floor(corners[0] * factor), 0, shape).astype(int)
    hi = np.clip(np.ceil((corners[1] + 1) * factor), 0, shape).astype(int)
    if np.any(hi - lo < 1):
        raise ValueError("the image is not in view: pan or zoom to it, or choose 'whole image'")
    return int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1])


def placement(layer: Image, level: int = 0, offset_px=(0, 0)) -> dict:
    """``scale``, ``translate`` and ``units`` for a result computed on ``level`` of ``layer``,
    starting ``offset_px`` (y, x) level pixels into it, so the result lies on the image."""
    ds = level_downsample(layer, level)
    scale = np.asarray(layer.scale[-2:], float) * ds
    translate = np.asarray(layer.translate[-2:], float) + np.asarray(offset_px, float) * scale
    # a pixel of a coarser level covers ds level-0 pixels: shift its centre accordingly
    translate += (ds - 1) / 2 * np.asarray(layer.scale[-2:], float)
    out = {"scale": tuple(scale), "translate": tuple(translate)}
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = tuple(units)[-2:]
    return out


def mask_digest(data) -> str:
    """A short hash of a labels array, to notice hand edits since we wrote it."""
    return hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=12).hexdigest()


def hand_edited(layer: Labels) -> bool:
    """Whether a Labels layer we wrote has been changed since (by the brush or anything)."""
    digest = layer.metadata.get("histoseg_digest")
    return digest is not None and digest != mask_digest(layer.data)


def put_labels(viewer, name: str, data, source: Image, place: dict, metadata: dict) -> Labels:
    """Write ``data`` into the Labels layer ``name``, or a new one if that layer holds hand
    edits or does not fit; never overwrites a person's edits silently. Returns the layer."""
    meta = {**metadata, "histoseg_digest": mask_digest(data), "histoseg_source": source.name}
    existing = viewer.layers[name] if name in viewer.layers else None
    if (
        isinstance(existing, Labels)
        and existing.data.shape == data.shape
        and existing.metadata.get("histoseg_source") == source.name
        and not hand_edited(existing)
    ):
        existing.data = data
        existing.metadata.update(meta)
        existing.scale, existing.translate = place["scale"], place["translate"]
        return existing
    if existing is not None:
        from napari.utils.notifications import show_info

        show_info(f"'{name}' has hand edits or belongs to another image; the new result is a new layer.")
    return viewer.add_labels(data, name=name, metadata=meta, opacity=0.45, **place)


def put_image(viewer, name: str, data, place: dict, **kwargs) -> Image:
    """Replace the data of image layer ``name`` or add it."""
    if name in viewer.layers and isinstance(viewer.layers[name], Image) and viewer.layers[name].data.shape == data.shape:
        layer = viewer.layers[name]
        layer.data = data
        layer.scale, layer.translate = place["scale"], place["translate"]
        return layer
    return viewer.add_image(data, name=name, **place, **kwargs)


def tumour_colormap():
    """Label colours of the mask contract: 1 tumour (green, which stands out on pink and purple H&E), 255 ignore (grey), 0 clear."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={
        None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (0.1, 0.95, 0.3, 1.0), 2: (0.2, 0.5, 1.0, 1.0),
        255: (0.5, 0.5, 0.5, 1.0),
    })


def mask_window(mask: Labels, image: Image) -> tuple[int, tuple[int, int]]:
    """Which pyramid level of ``image`` the mask's pixels are, and where (y, x) in that
    level the mask's first pixel lies. A mask may cover a window ('visible area') or a
    coarser level; its scale and translate say which. ValueError when no level fits."""
    base = np.asarray(image.scale[-2:], float)
    ds = float(np.asarray(mask.scale[-2:], float)[0] / base[0])
    levels = range(len(image.data)) if image.multiscale else [0]
    level = next((k for k in levels if abs(level_downsample(image, k) - ds) < 0.02 * ds), None)
    if level is None:
        raise ValueError(f"'{mask.name}' has pixels {ds:g} x the image's, which no level of '{image.name}' has")
    origin = np.asarray(image.translate[-2:], float) + (ds - 1) / 2 * base
    offset = np.round((np.asarray(mask.translate[-2:], float) - origin) / (base * ds)).astype(int)
    h, w = mask.data.shape[-2:]
    shape = level_data(image, level).shape
    if offset.min() < 0 or offset[0] + h > shape[0] or offset[1] + w > shape[1]:
        raise ValueError(f"'{mask.name}' reaches outside '{image.name}'")
    return level, (int(offset[0]), int(offset[1]))


def image_under(mask: Labels, image: Image) -> np.ndarray:
    """The pixels of ``image`` that lie under ``mask`` (same grid), as an array."""
    level, (y0, x0) = mask_window(mask, image)
    h, w = mask.data.shape[-2:]
    return np.asarray(level_data(image, level)[y0:y0 + h, x0:x0 + w])
