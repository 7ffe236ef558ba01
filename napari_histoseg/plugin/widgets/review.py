"""The Review dock widget: walk a segmentation field by field, most uncertain first.

Choose the image, the tumour probability and the mask (a Segment run's layers, or a
``segment-slides`` result opened in napari), a field size and an order, and press Start.
The canvas jumps to each field; the field's mask is a single-scale ``review field`` layer
(paint on it, or press Refine this field to correct it with the Refine dock); keys on the
viewer: n next, p previous, a accept, f flag, s skip. A field whose mask was changed is
saved as *corrected* (its edit map) with every stroke, and shown again as you left it when
you come back. The ``review status`` layer outlines every field in its status colour, and
the review is saved after every step (``histoseg-review/REVIEWER.json`` beside the result,
or beside the image), so reopening it with the same reviewer name resumes it.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

from napari_histoseg.plugin.widgets._layers import Scrolling, level_data, level_downsample, unwrap
from napari_histoseg.review.export import STATUS_COLOURS, export_reviewed, review_geojson
from napari_histoseg.review.fields import ReviewSource
from napari_histoseg.review.ranking import DEFAULT_RANKING, RANKINGS
from napari_histoseg.review.state import open_review, reviewer_file

FIELD_LAYER, PRIOR_LAYER, STATUS_LAYER = "review field", "review field probability", "review status"
OURS = (FIELD_LAYER, PRIOR_LAYER, STATUS_LAYER, "seeds")
KEYS = {"n": "next", "p": "previous", "a": "accept", "f": "flag", "s": "skip"}
KEYS_TEXT = "Keys: n next · p previous · a accept · f flag · s skip"
FIELD_COLOURS = {0: [0, 0, 0, 0], 1: [1.0, 0.25, 0.0, 1.0], None: [0, 0, 0, 0]}
CURRENT_COLOUR = (1.0, 0.85, 0.0, 1.0)   # the field on the canvas: yellow
NOT_STARTED = "Choose the layers and press Start review."


class ReviewWidget(Scrolling, Container):
    """Field-by-field review of a tumour segmentation."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self.state = None
        self.source: ReviewSource | None = None
        self._loaded = None      # the field's mask as it was shown (to notice edits)
        self._refine = None      # the Refine dock opened from here
        self._units = {}
        self._switching = False  # while go() replaces the field layer's data

        self.image = ComboBox(label="Image", choices=self._layers_of(Image, rgb=True))
        self.prob = ComboBox(label="Probability", choices=self._layers_of(Image, rgb=False),
                             tooltip="The model's tumour probability (it ranks the fields)")
        self.mask = ComboBox(label="Mask", choices=self._mask_choices, tooltip="The tumour mask under review")
        self.folder = FileEdit(label="Review folder", mode="d",
                               tooltip="Where reviews are kept; empty: beside the result or the image")
        self.size = SpinBox(label="Field size (px)", min=64, max=16384, step=64, value=512)
        self.ranking = ComboBox(label="Order", choices=list(RANKINGS), value=DEFAULT_RANKING,
                                tooltip="entropy: where the model is least sure first (of the probability's maps, "
                                        "the best at finding its errors); uncertainty: unsure or near its outline; "
                                        "disagreement: where the mask differs from the model; random, raster: "
                                        "for comparison")
        self.reviewer = LineEdit(label="Reviewer", value=getpass.getuser())
        self.start_button = PushButton(text="Start review")
        self.where = Label(value=NOT_STARTED)
        self.prev_button, self.next_button = PushButton(text="Previous (p)"), PushButton(text="Next (n)")
        self.accept_button, self.flag_button = PushButton(text="Accept (a)"), PushButton(text="Flag (f)")
        self.skip_button = PushButton(text="Skip (s)")
        self.refine_button = PushButton(text="Refine this field")
        self.keys = Label(value=KEYS_TEXT)
        self.progress = Label(value="")
        self.out_dir = FileEdit(label="Training folder", mode="d")
        self.export_button = PushButton(text="Export reviewed fields")
        self.geojson = FileEdit(label="GeoJSON", mode="w", filter="*.geojson")
        self.geojson_button = PushButton(text="Save review GeoJSON")
        for lab in (self.where, self.progress, self.keys):
            lab.native.setWordWrap(True)
        row = lambda *w: Container(widgets=list(w), layout="horizontal", labels=False)  # noqa: E731
        self.extend([self.image, self.prob, self.mask, self.folder, self.size, self.ranking, self.reviewer,
                     self.start_button, self.where, row(self.prev_button, self.next_button),
                     row(self.accept_button, self.flag_button, self.skip_button), self.refine_button, self.keys,
                     self.progress, self.out_dir, self.export_button, self.geojson, self.geojson_button])
        self.fit(460)

        self.start_button.clicked.connect(self.start)
        for name in KEYS.values():
            getattr(self, f"{name[:4] if name == 'previous' else name}_button").clicked.connect(
                lambda *_, n=name: self.act(n))
        self.refine_button.clicked.connect(self.refine_field)
        self.export_button.clicked.connect(lambda: self.export(self.out_dir.value))
        self.geojson_button.clicked.connect(lambda: self.save_geojson(self.geojson.value))
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda e=None: self.reset_choices())
        self.reset_choices()
        self._enable(False)

    # -- choices -----------------------------------------------------------------
    def _layers_of(self, kind, rgb):
        def choices(_w=None):
            return [(ly.name, ly) for ly in self.viewer.layers
                    if isinstance(ly, kind) and ly.name not in OURS and bool(getattr(ly, "rgb", False)) == rgb]
        return choices

    def _mask_choices(self, _w=None):
        return [("none (probability >= 0.5)", None)] + [
            (ly.name, ly) for ly in self.viewer.layers if isinstance(ly, Labels) and ly.name not in OURS]

    def reset_choices(self, *_):
        super().reset_choices()
        for combo, name in ((self.prob, "tumour probability"), (self.mask, "tumour")):
            if name in self.viewer.layers and combo.value is None:
                try:
                    combo.value = self.viewer.layers[name]
                except ValueError:
                    pass

    def _enable(self, on: bool):
        for w in (self.prev_button, self.next_button, self.accept_button, self.flag_button, self.skip_button,
                  self.refine_button, self.export_button, self.geojson_button):
            w.enabled = on

    # -- starting ------------------------------------------------------------------
    def _source(self) -> ReviewSource:
        prob, mask, image = self.prob.value, self.mask.value, self.image.value
        if prob is None:
            raise ValueError("choose the tumour probability (run Segment, or open a segment-slides result)")
        folder = str(self.folder.value) if str(self.folder.value) not in ("", ".") else None
        path = prob.metadata.get("path")
        if path and str(path).rstrip("/").endswith(".zarr") and Path(path).is_dir():
            src = ReviewSource.from_result(path)
            if folder:
                src.review_dir = Path(folder)
        else:
            img_path = getattr(getattr(image, "source", None), "path", None) if image is not None else None
            if folder is None and img_path is None:
                raise ValueError("the image was not opened from a file: choose a review folder")
            mdata = None if mask is None else (mask.data if mask.multiscale else [mask.data])
            levels = prob.data if prob.multiscale else [prob.data]
            src = ReviewSource.from_arrays(levels, mdata, self._tissue(image, prob, levels[0].shape),
                                           image_path=img_path, review_dir=folder, name=prob.name)
        src.scale, src.translate = tuple(prob.scale[-2:]), tuple(prob.translate[-2:])
        self._units = {"units": tuple(prob.units)[-2:]} if getattr(prob, "units", None) is not None else {}
        return src

    def _tissue(self, image, prob, shape):
        """The image's tissue (found as a Segment run finds it), so that glass is not reviewed."""
        if image is None:
            return None
        from napari_histoseg.core.tissue import image_tissue

        try:
            data = self._image_level(float(prob.scale[-2]))
        except ValueError:
            return None
        return image_tissue(data).mask if tuple(data.shape[:2]) == tuple(shape) else None

    def start(self):
        """Open (or resume) the review of the chosen layers by the named reviewer."""
        try:
            self._leave()
            src = self._source()
            who = self.reviewer.value.strip()
            if reviewer_file(src.review_dir, who).is_file():
                state = open_review(src, who)
                self.size.value, self.ranking.value = state.size, state.ranking
            else:
                state = open_review(src, who, size=int(self.size.value), ranking=self.ranking.value)
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot start the review: {e}")
            return
        self.source, self.state = src, state
        if self.mask.value is not None:
            self.mask.value.opacity = min(self.mask.value.opacity, 0.25)
        self._status_layer()
        self._bind_keys(self.viewer)
        self._enable(True)
        pos = state.position if state.resumed else 0
        if state.resumed:
            show_info(f"Resumed {who}'s review: {state.progress()}")
            nxt = state.next_unreviewed(pos)
            pos = pos if nxt is None else nxt
        self.go(pos)

    def _bind_keys(self, target):
        for key, name in KEYS.items():
            target.bind_key(key, lambda _v, n=name: self.act(n), overwrite=True)

    # -- moving --------------------------------------------------------------------
    @property
    def field(self):
        return None if self.state is None else self.state.fields[self.state.position]

    def act(self, name: str):
        """One step: ``next``, ``previous``, ``accept``, ``flag`` or ``skip`` (then on to the next)."""
        if self.state is None:
            show_info(NOT_STARTED)
            return
        try:
            n, pos = len(self.state.fields), self.state.position
            if name in ("accept", "flag", "skip"):
                self._leave(status=name)
                corrected = bool(self.state.record(self.field).get("edit_map"))  # a correction stays one
                status = {"accept": "accepted", "flag": "flagged", "skip": "skipped"}[name]
                self.state.set_status(self.field, "corrected" if corrected and name != "flag" else status)
                self.go(min(pos + 1, n - 1))
            elif name == "next":
                self.go(min(pos + 1, n - 1))
            elif name == "previous":
                self.go(max(pos - 1, 0))
        except Exception as e:  # noqa: BLE001
            show_error(f"Review: {e}")

    def _leave(self, status: str | None = None) -> bool:
        """Keep the shown field's edits (as corrected, or flagged); True if it was edited."""
        if self.state is None or self._loaded is None or FIELD_LAYER not in self.viewer.layers:
            return False
        data = np.asarray(self.viewer.layers[FIELD_LAYER].data)
        if data.shape == self._loaded.shape and np.array_equal(data, self._loaded):
            return False
        keep = "flagged" if (status == "flag" or self.state.status(self.field) == "flagged") else "corrected"
        self.state.save_edit(self.field, data, status=keep)
        self._loaded = data.copy()
        return True

    def _on_field_edit(self, _event=None):
        """Keep every stroke at once (a closed viewer loses nothing)."""
        if self._switching or self.state is None:
            return
        try:
            if self._leave():
                self._show_state()
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot keep the field's edit: {e}")

    def go(self, pos: int):
        """Show field ``pos`` of the queue: its mask as an editable layer, the canvas on it."""
        self._leave()
        st, src = self.state, self.source
        st.position = int(pos)
        f = self.field
        edit = st.edit_of(f)
        data = src.mask_of(f) if edit is None else edit
        sy, sx = src.scale
        place = {"scale": (sy, sx), "translate": (src.translate[0] + f.y * sy, src.translate[1] + f.x * sx),
                 **self._units}
        layers = self.viewer.layers
        if "seeds" in layers and self._refine is not None:
            layers.remove("seeds")     # seeds belong to the field they were drawn on
        prob = src.probability_of(f)
        if PRIOR_LAYER in layers:
            layers[PRIOR_LAYER].data = prob
            layers[PRIOR_LAYER].translate = place["translate"]
            layers[PRIOR_LAYER].scale = place["scale"]
        else:
            self.viewer.add_image(prob, name=PRIOR_LAYER, colormap="inferno", contrast_limits=(0, 1),
                                  visible=False, **place)
        self._switching = True
        try:
            if FIELD_LAYER in layers:
                lay = layers[FIELD_LAYER]
                lay.data = data.copy()
                lay.scale, lay.translate = place["scale"], place["translate"]
            else:
                lay = self.viewer.add_labels(data.copy(), name=FIELD_LAYER, opacity=0.6, colormap=FIELD_COLOURS,
                                             **place)
                self._bind_keys(lay)
                lay.events.paint.connect(self._on_field_edit)
                lay.events.data.connect(self._on_field_edit)
            self._loaded = data.copy()
        finally:
            self._switching = False
        cy = src.translate[0] + (f.y + f.h / 2 - 0.5) * sy
        cx = src.translate[1] + (f.x + f.w / 2 - 0.5) * sx
        self.viewer.camera.center = (cy, cx)
        canvas = min(getattr(getattr(self.viewer, "canvas", None), "size", None) or (800, 800))
        self.viewer.camera.zoom = 0.85 * canvas / max(f.h * sy, f.w * sx)
        st.save()
        self._show_state()
        if self._refine is not None and getattr(self._refine, "session", None) is not None:
            self.refine_field()

    def _show_state(self):
        st, f = self.state, self.field
        rec = st.record(f)
        by = f" by {rec['who']} ({rec['when']})" if rec["status"] != "unreviewed" and rec["who"] else ""
        self.where.value = (f"Field {st.position + 1} of {len(st.fields)} (no. {f.index}, entropy {f.entropy:.2f}, "
                            f"tumour {100 * f.tumour_px / (f.h * f.w):.0f} %): {rec['status']}{by}")
        self.progress.value = st.progress()
        self._colour_status()

    # -- the status layer ----------------------------------------------------------
    def _status_layer(self):
        src, st = self.source, self.state
        e = max(2.0, st.size / 40)   # outlines inset by half their width: neighbours' never overlap
        rects = [np.array([[f.y - 0.5 + e / 2, f.x - 0.5 + e / 2], [f.y + f.h - 0.5 - e / 2, f.x + f.w - 0.5 - e / 2]])
                 for f in st.fields]
        if STATUS_LAYER in self.viewer.layers:
            self.viewer.layers.remove(STATUS_LAYER)
        layer = self.viewer.add_shapes(rects, shape_type="rectangle", name=STATUS_LAYER, face_color=[0, 0, 0, 0],
                                       edge_color=self._colours(), edge_width=e,
                                       scale=src.scale, translate=src.translate, **self._units)
        layer.editable = False
        layer.metadata["statuses"] = [st.status(f) for f in st.fields]
        self._bind_keys(layer)
        if FIELD_LAYER in self.viewer.layers:
            self.viewer.layers.selection.active = self.viewer.layers[FIELD_LAYER]

    def _colours(self) -> np.ndarray:
        st = self.state
        out = np.array([[*np.divide(STATUS_COLOURS[st.status(f)], 255), 1.0] for f in st.fields], float)
        out[st.position] = CURRENT_COLOUR
        return out

    def _colour_status(self):
        if STATUS_LAYER not in self.viewer.layers:
            return
        layer = self.viewer.layers[STATUS_LAYER]
        layer.edge_color = self._colours()
        layer.metadata["statuses"] = [self.state.status(f) for f in self.state.fields]

    # -- refine, export ------------------------------------------------------------
    def refine_field(self):
        """Open the Refine dock on this field (its mask and probability crops)."""
        if self.state is None:
            show_info(NOT_STARTED)
            return
        try:
            if self._refine is None or self._refine.native.parent() is None:
                _, self._refine = self.viewer.window.add_plugin_dock_widget("napari-histoseg",
                                                                            "Refine tumour boundary")
            r = self._refine
            r.reset_choices()
            if self.image.value is not None:
                r.image.value = self.image.value
            r.mask.value = self.viewer.layers[FIELD_LAYER]
            r.prior.value = self.viewer.layers[PRIOR_LAYER]
            r.start()
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot refine this field: {e}")

    def _image_level(self, map_scale: float):
        """The level of the chosen image whose pixels are the map's."""
        img = self.image.value
        if img is None:
            raise ValueError("choose the image")
        ds = map_scale / float(img.scale[-2])
        levels = range(len(img.data)) if img.multiscale else [0]
        level = next((k for k in levels if abs(level_downsample(img, k) - ds) < 0.02 * ds), None)
        if level is None:
            raise ValueError(f"'{img.name}' has no level at the map's resolution ({ds:g} x its pixels)")
        return level_data(img, level)

    def _image_at_map(self):
        data = self._image_level(float(self.source.scale[0]))
        return lambda f: np.asarray(data[f.y:f.y + f.h, f.x:f.x + f.w])[..., :3]

    def export(self, out_dir):
        """Add the accepted and corrected fields to a training-data folder."""
        try:
            self._leave()
            if self.state is None or str(out_dir) in ("", "."):
                raise ValueError("start a review and choose the training folder first")
            recs = export_reviewed(self.state, self.source, self._image_at_map(), out_dir)
            show_info(f"Exported {len(recs)} reviewed field(s) to {out_dir}" if recs else
                      "No accepted or corrected field to export yet")
            return recs
        except Exception as e:  # noqa: BLE001
            show_error(f"Export failed: {e}")
            return None

    def save_geojson(self, path):
        """Write the review (field outlines with statuses, reviewed tumour) as QuPath GeoJSON."""
        import json

        try:
            self._leave()
            if self.state is None or str(path) in ("", "."):
                raise ValueError("start a review and choose the GeoJSON file first")
            img, src = self.image.value, self.source
            scale, offset = 1.0, (0.0, 0.0)
            if img is not None:
                base = np.asarray(img.scale[-2:], float)
                scale = float(src.scale[0]) / base[0]
                corner = (np.asarray(src.translate) - np.asarray(src.scale) / 2
                          - (np.asarray(img.translate[-2:]) - base / 2)) / base
                offset = (float(corner[1]), float(corner[0]))
            Path(path).write_text(json.dumps(review_geojson(self.state, src, offset=offset, scale=scale)))
            show_info(f"Saved the review to {path}")
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot save the GeoJSON: {e}")
