"""The Classify dock widget: benign or malignant, for the view, drawn shapes or tumour regions.

Each region gets a point at its centre with its label, calibrated probability and the
spread of that probability over the region's tiles as text (a Points layer
``classification``), and, optionally, the classifier's Grad-CAM of the predicted class
over the region (an Image layer ``classifier Grad-CAM``). Work runs in a thread worker
with napari's progress bar and Cancel; errors become notifications.

The scale: the µm/px typed in, else a stated magnification (the Magnification field, 40x-400x
as the microscope states it), else the image's own µm/px, else an estimate from nucleus size;
each label says which (``400x stated``, ``242x estimated``), and a notification says when the
nuclei contradict the stated magnification.
"""

from __future__ import annotations

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, PushButton
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_warning

from napari_histoseg.models.bundled import BUNDLED
from napari_histoseg.plugin.widgets._layers import (
    Scrolling,
    free_layer,
    hand_edited,
    level_data,
    level_downsample,
    mask_digest,
    mask_window,
    placement,
    put_image,
    unwrap,
    visible_region,
)
from napari_histoseg.plugin.widgets._model_choice import THIS_COMPUTER, ModelChoice
from napari_histoseg.plugin.widgets._runner import Runner, RunsWork
from napari_histoseg.plugin.widgets._shapes import shape_masks

WHAT = [("the visible area", "view"), ("each shape I drew", "shapes"), ("each tumour region", "tumour")]
#: Magnification choices (microscope convention: objective x 10 eyepiece); None: the image's µm/px, else estimated
MAGNIFICATIONS = [("from the image, else estimated", None), ("40x", 40.0), ("100x", 100.0), ("200x", 200.0),
                  ("400x", 400.0)]
SOURCES = {"given": "image's µm/px", "magnification": "stated", "estimate": "estimated", "unknown": "scale unknown"}
#: Grad-CAM colours: 0 transparent (the tissue shows through), 1 opaque red
CAM_COLORMAP = {"name": "classifier evidence", "colors": [[1.0, 0.1, 0.0, 0.0], [1.0, 0.1, 0.0, 1.0]]}
COLOURS = {"malignant": (0.95, 0.2, 0.2, 1.0), "benign": (0.2, 0.5, 1.0, 1.0)}
LABEL_SIZE = 12  # points, on screen


def shape_items(shapes: Shapes, image: Image, level: int) -> list:
    """``(name, (y0, x0, h, w), mask)`` per drawn shape of at least 2 x 2 px, in pixels of ``level``."""
    return [(f"shape {i + 1}", box, mask) for i, box, mask in shape_masks(shapes, image, level)
            if box[2] >= 2 and box[3] >= 2]


def label_items(labels: Labels, image: Image) -> tuple[int, list]:
    """``(level, items)``: one item per connected region of ``labels`` > 0."""
    from skimage.measure import label, regionprops

    level, (oy, ox) = mask_window(labels, image)
    comp = label(np.asarray(labels.data) > 0, connectivity=2)
    items = []
    for rp in regionprops(comp):
        y0, x0, y1, x1 = rp.bbox
        items.append((f"region {rp.label}", (oy + y0, ox + x0, y1 - y0, x1 - x0), rp.image))
    return level, items


class ClassifyWidget(RunsWork, Scrolling, Container):
    """Benign or malignant, with a calibrated probability, for regions of an H&E image."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self._follows_zoom = False
        self.image = ComboBox(label="Image", choices=self._choices(Image, rgb=True))
        self.what = ComboBox(label="Classify", choices=WHAT, value="view")
        self.shapes = ComboBox(label="Shape layer", choices=self._choices(Shapes), visible=False)
        self.tumour = ComboBox(label="Tumour layer", choices=self._choices(Labels), visible=False)
        self.mpp = FloatSpinBox(label="µm/px (0: image's)", min=0.0, max=50.0, step=0.01, value=0.0,
                                tooltip="Pixel size of the image; 0: from the image, else from the "
                                        "magnification below, else estimated from nucleus size")
        self.magnification = ComboBox(
            label="Magnification", choices=MAGNIFICATIONS, value=None,
            tooltip="The field's magnification as the microscope states it (objective x 10 eyepiece: "
                    "BreakHis 40x-400x). It is used instead of the image's own µm/px; the nuclei are "
                    "measured to check it, and a warning says when they disagree. A scanner's '40x' "
                    "objective is about 0.25 µm/px: give that as µm/px instead.")
        self.model = LineEdit(label="Model", value="", tooltip="A classification checkpoint; empty: the bundled one")
        self.model.native.setPlaceholderText("bundled classifier")
        self.gradcam = CheckBox(text="Grad-CAM over each region", value=True)
        self.model_choice = ModelChoice(models=False)
        self.run_button, self.cancel_button = PushButton(text="Classify"), PushButton(text="Cancel", enabled=False)
        self.status = Label(value="Choose what to classify and press Classify.")
        self.status.native.setWordWrap(True)
        self.runner = Runner(self.status, self.run_button, self.cancel_button)
        self.extend([self.image, self.what, self.shapes, self.tumour, self.mpp, self.magnification,
                     *self.model_choice.backend_widgets,
                     self.model, self.gradcam,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                     self.status])
        self.fit(460)
        self.what.changed.connect(self._on_what)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda e=None: self.reset_choices())

    def _choices(self, kind, rgb=False):
        return lambda _w=None: [(ly.name, ly) for ly in self.viewer.layers
                                if isinstance(ly, kind) and (not rgb or ly.rgb)]

    def _on_what(self, value=None):
        self.shapes.visible = self.what.value == "shapes"
        self.tumour.visible = self.what.value == "tumour"
        if self.what.value == "tumour" and self.tumour.value is None and "tumour" in self.viewer.layers:
            self.tumour.value = self.viewer.layers["tumour"]

    def _request(self):
        layer = self.image.value
        if layer is None:
            raise ValueError("open an H&E image first")
        level = layer.data_level if layer.multiscale else 0
        what = self.what.value
        if what == "tumour":
            labels = self.tumour.value
            if labels is None:
                raise ValueError("no tumour layer: segment the image first, or choose another option")
            level, items = label_items(labels, layer)
            if not items:
                raise ValueError(f"'{labels.name}' marks no region")
        elif what == "shapes":
            shapes = self.shapes.value
            if shapes is None or len(shapes.data) == 0:
                raise ValueError("draw one or more shapes (a Shapes layer) around the regions to classify")
            items = shape_items(shapes, layer, level)
            if not items:
                raise ValueError("the drawn shapes are outside the image")
        else:
            y0, x0, h, w = visible_region(layer, level)
            items = [("view", (y0, x0, h, w), None)]
        mag = self.magnification.value
        mpp = self.mpp.value or (None if mag else layer.metadata.get("mpp"))
        mpp = None if not mpp else float(mpp) * (1 if self.mpp.value else level_downsample(layer, level))
        if mag:  # stated for the full-resolution image; a pyramid level is that much less magnified
            mag = float(mag) / level_downsample(layer, level)
        return layer, level, items, mpp, mag

    def run(self):
        try:
            layer, level, items, mpp, mag = self._request()
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot classify: {e}")
            return None
        try:
            backend = self.model_choice.backend()
        except ValueError as e:
            show_error(f"Cannot classify: {e}")
            return None
        from napari_histoseg.classifier.regions import iter_classify_regions

        data, ref = level_data(layer, level), self.model.value.strip() or BUNDLED

        last = {}   # the region just classified: its Grad-CAM explains that class, with no second pass

        def classify(crop, mask, name):
            last["result"] = None
            result = yield from backend.classify(crop, ref, region=mask, mpp=mpp, what=name, magnification=mag,
                                                 engine="auto")   # bfloat16 on a CPU that has it
            last["result"] = result
            return result

        explain = None
        if self.gradcam.value and self.model_choice.runs_on.value == THIS_COMPUTER:
            from napari_histoseg.classifier.infer import explain_region

            def explain(crop, mask):
                done = last.get("result")
                channel = None if done is None else int(np.argmax(done.probabilities))
                return explain_region(crop, backend.model(ref, engine="auto", task="classification"), mask, mpp,
                                      channel=channel, magnification=mag)
        elif self.gradcam.value:
            show_warning("The classifier's Grad-CAM is made on this computer only: none over the server's labels.")
        return self.runner.start(lambda *_: iter_classify_regions(data, items, classify, explain),
                                 lambda out: self._on_result(out, layer, level, backend, ref), what="Classification",
                                 label="Classifying", unit="steps", cancelled="Cancelled; nothing was added.",
                                 message=f"Classifying {len(items)} region(s)…")

    def _on_result(self, out, layer, level, backend, ref):
        results, heat = out
        points, text, colours, refused, notes = [], [], [], [], set()
        for name, (y0, x0, h, w), mask, r in results:
            if isinstance(r, str):
                refused.append(r)
                continue
            notes.update(r.warnings)
            cy, cx = (np.argwhere(mask).mean(0) if mask is not None else (h / 2, w / 2))
            points.append((y0 + cy, x0 + cx))
            tiles = f"{r.n_tiles} tile{'s' if r.n_tiles != 1 else ''}"
            sc = getattr(r, "scale", None) or {}
            at = (f", {sc['magnification']:.0f}x {SOURCES.get(sc.get('source'), '')}" if sc.get("magnification")
                  else "")
            text.append(f"{name}: {r.label} {r.probability:.2f} ± {r.spread:.2f} ({tiles}{at})")
            colours.append(COLOURS.get(r.label, (1, 1, 1, 1)))
        place = placement(layer, level)
        if heat is not None and points:  # first, so the labels are drawn over it
            (uy0, ux0), hmap = heat
            put_image(self.viewer, "classifier Grad-CAM", hmap, placement(layer, level, (uy0, ux0)),
                      colormap=CAM_COLORMAP, contrast_limits=(0.0, 1.0), opacity=0.7)
            self.viewer.layers["classifier Grad-CAM"].contrast_limits = (0.0, 1.0)
        if points:
            self._put_points(np.array(points), text, colours, place, level_data(layer, level).shape[:2])
        if refused:  # one notification for all of them (a mask may have many specks)
            more = f" (and {len(refused) - 1} more like it)" if len(refused) > 1 else ""
            show_warning(f"{len(refused)} of {len(results)} region(s) not classified: {refused[0]}{more}")
        for n in sorted(notes):
            show_warning(n)
        msg = f"{len(points)} region(s) classified by {backend.describe(ref, task='classification')}"
        msg += f"; {len(refused)} refused (see notifications)." if refused else "."
        msg += (" Text: label, calibrated probability ± its spread over the region's tiles. "
                "Grad-CAM: the redder, the more that tissue drove the label.")
        return msg

    def _put_points(self, pts, text, colours, place, hw):
        """A point at each region's centre (its colour: the label), and the label as white
        text on a dark box kept inside the image, so it is read on any tissue and not cut
        off at the canvas edge."""
        fits = lambda ly: "histoseg_digest" in ly.metadata  # noqa: E731
        old, name = free_layer(self.viewer, "classification", Points, fits)
        if old is not None:
            self.viewer.layers.remove(old)
        s = float(place["scale"][0])
        points = self.viewer.add_points(
            pts, name=name, size=14 * s, face_color=colours, border_color="white",
            features={"text": text}, metadata={"histoseg_digest": mask_digest(pts)}, **place)
        short = [t.split(" (")[0] for t in text]
        old, lname = free_layer(self.viewer, f"{name} labels", Shapes, fits)
        if old is not None:
            self.viewer.layers.remove(old)
        boxes = self.viewer.add_shapes(
            self._boxes(pts, short, place, hw), shape_type="rectangle", name=lname,
            face_color=np.tile([0.0, 0.0, 0.0, 0.75], (len(short), 1)), edge_color=np.asarray(colours, float),
            edge_width=2 * s, features={"text": short}, opacity=1.0,
            text={"string": "{text}", "color": "white", "size": LABEL_SIZE, "anchor": "center"}, **place)
        boxes.metadata["histoseg_digest"] = mask_digest(np.concatenate(boxes.data))
        boxes.metadata["histoseg_labels"] = (pts, short, place, hw)
        self._labels = boxes
        if not self._follows_zoom:
            self.viewer.camera.events.zoom.connect(self._relayout)
            self._follows_zoom = True
        return points

    def _boxes(self, pts, short, place, hw):
        """Rectangles (data pixels) around each label at the present zoom, above its point
        and shifted inside the image (``hw`` data pixels)."""
        zoom = max(float(self.viewer.camera.zoom), 1e-6) * float(place["scale"][0])  # screen px per data px
        out = []
        for (y, x), t in zip(pts, short):
            half_w = (0.92 * LABEL_SIZE * len(t) / 2 + 8) / zoom   # measured: ~0.9 x size per character
            half_h = (1.7 * LABEL_SIZE / 2 + 4) / zoom
            cy = y - 14 / zoom - half_h
            cy = float(np.clip(cy, half_h, max(half_h, hw[0] - half_h)))
            cx = float(np.clip(x, half_w, max(half_w, hw[1] - half_w)))
            out.append(np.array([[cy - half_h, cx - half_w], [cy + half_h, cx + half_w]]))
        return out

    def _relayout(self, _=None):
        boxes = getattr(self, "_labels", None)
        if boxes is None or boxes not in self.viewer.layers or hand_edited(boxes):
            return
        data = self._boxes(*boxes.metadata["histoseg_labels"])
        boxes.data = [np.array([[a[0, 0], a[0, 1]], [a[0, 0], a[1, 1]], [a[1, 0], a[1, 1]], [a[1, 0], a[0, 1]]])
                      for a in data]
        boxes.metadata["histoseg_digest"] = mask_digest(np.concatenate(boxes.data))
