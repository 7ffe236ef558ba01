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


def hand_edited(layer) -> bool:
    """Whether a layer we wrote holds a person's work: changed since (by the brush, a
    refinement, anything) or with accepted corrections recorded on it."""
    meta = layer.metadata
    if meta.get("histoseg_edited"):
        return True
    edits = meta.get("histoseg_edits")
    if edits is not None and np.any(edits):
        return True
    digest = meta.get("histoseg_digest")
    return digest is not None and digest != mask_digest(layer.data)


def numbered(name: str, k: int) -> str:
    return name if k == 1 else f"{name} [{k}]"


def free_layer(viewer, name: str, kind, fits=lambda layer: True):
    """``(layer, name)`` to write a new result called ``name`` into: the first of
    ``name``, ``name [2]``, … that is a ``kind`` layer holding no person's work and
    ``fits``, or ``(None, new_name)`` for a new layer. Tells the person when the
    result goes to a new layer because theirs holds their work."""
    k, protected = 1, []
    while numbered(name, k) in viewer.layers:
        layer = viewer.layers[numbered(name, k)]
        if isinstance(layer, kind) and fits(layer) and not hand_edited(layer):
            return layer, layer.name
        if hand_edited(layer):
            protected.append(layer.name)
        k += 1
    new = numbered(name, k)
    if protected:
        from napari.utils.notifications import show_info

        show_info(f"New result in '{new}': '{protected[0]}' holds your corrections and is kept as it is.")
    return None, new


def put_labels(viewer, name: str, data, source: Image, place: dict, metadata: dict) -> Labels:
    """Write ``data`` into the Labels layer ``name`` (or ``name [2]``, …: see
    :func:`free_layer`); never overwrites a person's work. Returns the layer."""
    meta = {**metadata, "histoseg_digest": mask_digest(data), "histoseg_source": source.name}
    fits = lambda ly: ly.data.shape == data.shape and ly.metadata.get("histoseg_source") == source.name  # noqa: E731
    existing, name = free_layer(viewer, name, Labels, fits)
    if existing is not None:
        existing.data = data
        existing.metadata.clear()
        existing.metadata.update(meta)
        existing.scale, existing.translate = place["scale"], place["translate"]
        return existing
    return viewer.add_labels(data, name=name, metadata=meta, opacity=0.45, **place)


def put_image(viewer, name: str, data, place: dict, **kwargs) -> Image:
    """Replace the data of image layer ``name`` or add it."""
    if name in viewer.layers and isinstance(viewer.layers[name], Image) and viewer.layers[name].data.shape == data.shape:
        layer = viewer.layers[name]
        layer.data = data
        layer.scale, layer.translate = place["scale"], place["translate"]
        return layer
    return viewer.add_image(data, name=name, **place, **kwargs)


#: mask colours, one per model: green (bundled), then magenta, orange, violet
MASK_COLOURS = [(0.1, 0.95, 0.3, 1.0), (1.0, 0.2, 0.85, 1.0), (1.0, 0.5, 0.0, 1.0), (0.6, 0.35, 1.0, 1.0)]
#: seed colours, unlike every mask colour: tumour yellow, not tumour cyan
SEED_COLOURS = {1: (1.0, 0.92, 0.0, 1.0), 2: (0.0, 0.85, 1.0, 1.0)}


def tumour_colormap(colour=MASK_COLOURS[0]):
    """Label colours of the mask contract: 1 tumour (``colour``; green stands out on pink
    and purple H&E), 255 ignore (grey), 0 clear."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={
        None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: tuple(colour), 2: (0.2, 0.5, 1.0, 1.0),
        255: (0.5, 0.5, 0.5, 1.0),
    })


def seeds_colormap():
    """Seed colours: 1 tumour seed (yellow), 2 not-tumour seed (cyan); neither is a mask colour."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), **SEED_COLOURS})


def model_colour(viewer, model: str, layer=None):
    """The mask colour of ``model``: the one its masks already have in the viewer, else the
    first that no other model's mask has (the bundled model starts green)."""
    used = {}
    for ly in viewer.layers:
        if isinstance(ly, Labels) and ly is not layer and "histoseg_colour" in ly.metadata:
            used.setdefault(str(ly.metadata.get("model")), tuple(ly.metadata["histoseg_colour"]))
    if str(model) in used:
        return used[str(model)]
    taken = set(used.values())
    start = 0 if str(model) == "bundled" else 1
    free = [c for c in MASK_COLOURS[start:] + MASK_COLOURS[:start] if c not in taken]
    return free[0] if free else MASK_COLOURS[len(used) % len(MASK_COLOURS)]


def unwrap(viewer):
    """The viewer itself: napari hands plugin widgets a proxy of it; the widgets keep the
    real one, so that layers compare, choose and update exactly as when built by hand."""
    return getattr(viewer, "__wrapped__", viewer)


def heading(title: str, what: str = ""):
    """A section title for a widget's panel (bold, with an optional small line below saying
    what the section is for); pass it to :func:`span` once the panel holds it."""
    from magicgui.widgets import Label

    label = Label(value=f"<b>{title}</b>" + (f"<br><small>{what}</small>" if what else ""))
    label.native.setWordWrap(True)
    return label


def span(widget) -> None:
    """Let a heading start at the panel's left edge: hide the empty label column of its row
    (magicgui keeps a row's label in a private wrapper; without it the heading stays indented)."""
    row = getattr(widget, "_labeled_widget_ref", None)
    row = row() if callable(row) else None
    label = getattr(row, "_label_widget", None)
    if label is not None:
        from qtpy.QtWidgets import QSizePolicy

        label.visible = False
        widget.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)


class Scrolling:
    """Mixin for a dock widget (a magicgui Container made with ``scrollable=True``):
    napari docks ``.native``, so ``.native`` is the scroll area; ``body`` holds the layout.
    The scroll area may shrink to a few rows, so that every dock fits on a small screen."""

    MIN_HEIGHT = 48

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.native.setMinimumHeight(self.MIN_HEIGHT)

    @property
    def native(self):
        return self.root_native_widget

    @property
    def body(self):
        return self._widget._mgui_get_native_widget()

    def fit(self, max_width: int = 460):
        """Call last in ``__init__``: rows keep their natural height (a stretch below
        them), the content is about ``max_width`` wide, and the dock is made wide enough
        for it once napari has styled it (a horizontal scroll bar if the window is not)."""
        from qtpy.QtCore import Qt, QTimer

        self.body.layout().addStretch(1)
        self.native.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self._max_width = max_width
        self._fit_width()
        QTimer.singleShot(0, self._fit_width)  # after docking: styled fonts are wider

    def _fit_width(self):
        try:
            body, scroll = self.body, self.native
            need = body.minimumSizeHint().width()
        except RuntimeError:  # closed before the event loop came round
            return
        wide = max(self._max_width, need)
        body.setMaximumWidth(wide)
        extra = scroll.verticalScrollBar().sizeHint().width() + 2 * scroll.frameWidth() + 4
        scroll.setMinimumWidth(need + extra)
        scroll.setMaximumWidth(wide + extra)


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
