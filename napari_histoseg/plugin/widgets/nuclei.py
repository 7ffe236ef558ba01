"""The Nuclei dock widget: find, outline and measure every nucleus of an H&E image.

Where: the whole image, the visible area, the shapes drawn in a Shapes layer, or the
``tumour`` Labels layer (only nuclei whose centroid lies inside are kept). The result is
a Labels layer ``nuclei`` (one label per nucleus, on the image's scale and translate) whose
``features`` table holds the per-nucleus measurements; a summary per region (tumour
against the rest) is shown in the dock and the table can be saved as CSV, or the nuclei
as a GeoJSON QuPath imports as its own detections or cells, with their measurements.

The image's µm per pixel comes from the layer's metadata, or from the "µm / px" box (0:
unknown); the detector resamples the image to the model's magnification with it.
"""

from __future__ import annotations

from pathlib import Path

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSlider, FloatSpinBox, Label, PushButton
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_warning

from napari_histoseg.models.bundled import BUNDLED
from napari_histoseg.plugin.widgets._layers import (
    Scrolling,
    free_layer,
    level_data,
    level_downsample,
    mask_digest,
    mask_window,
    placement,
    unwrap,
    visible_region,
)
from napari_histoseg.plugin.widgets._model_choice import ModelChoice
from napari_histoseg.plugin.widgets._runner import Runner, RunsWork
from napari_histoseg.plugin.widgets._shapes import rasterise

WHERE = ["whole image", "visible area", "drawn shapes", "inside tumour layer"]
METHODS = [("Mask R-CNN (bundled model)", "model"), ("Mask R-CNN (checkpoint file)", "file"),
           ("classical watershed", "classical")]


class NucleiWidget(RunsWork, Scrolling, Container):
    """Choose an image, where to look and the detector; Run works in a worker, Cancel stops it."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self.result = None
        self.image = ComboBox(label="Image", choices=self._image_choices, tooltip="The H&E image layer")
        self.where = ComboBox(label="Where", choices=WHERE, value="whole image",
                              tooltip="drawn shapes: the polygons/rectangles of the Shapes layer below; "
                                      "inside tumour layer: nuclei whose centre lies in 'tumour'")
        self.shapes = ComboBox(label="Shapes", choices=self._shape_choices, visible=False)
        self.tumour = ComboBox(label="Tumour mask", choices=self._label_choices, nullable=True,
                               tooltip="Labels layer (non-zero = tumour) for the tumour vs rest summary")
        self.method = ComboBox(label="Detector", choices=METHODS, value="model",
                               tooltip="The classical watershed always runs on this computer")
        self.model_choice = ModelChoice(models=False)
        self.model_file = FileEdit(label="Checkpoint", filter="*.safetensors", visible=False)
        self.score = FloatSlider(label="Min. score", min=0.05, max=0.95, step=0.05, value=0.5,
                                 tooltip="Detections below this confidence are dropped")
        self.stain = CheckBox(text="Normalise stain", value=False,
                              tooltip="Bring the image's H&E colours to those the model learnt from (MoNuSeg) "
                                      "first. Turn on for another lab's or scanner's slides: on MoNuSAC's "
                                      "breast fields it found most nuclei instead of few.")
        self.mpp = FloatSpinBox(label="µm / px", min=0.0, max=20.0, step=0.01, value=0.0,
                                tooltip="Microns per pixel of the image (0: from the layer's metadata, or "
                                        "unknown). The model works at 0.25 µm/px (40x) and resamples to it.")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.csv = FileEdit(label="CSV", mode="w", filter="*.csv", value=str(Path.home() / "nuclei.csv"),
                            tooltip="Where the per-nucleus table goes (default: beside the image's file)")
        self.save_button = PushButton(text="Save features as CSV", enabled=False)
        self.qupath = FileEdit(label="QuPath", mode="w", filter="*.geojson",
                               value=str(Path.home() / "nuclei.geojson"),
                               tooltip="GeoJSON for QuPath (File > Import objects): its own detection or cell "
                                       "objects, class Nucleus, with area, perimeter, circularity, ...")
        self.qupath_kind = ComboBox(label="As", choices=["detections", "cells"], value="detections",
                                    tooltip="cells: each nucleus with a cell boundary grown 5 µm around it, "
                                            "as QuPath's cell detection makes them")
        self.qupath_button = PushButton(text="Save for QuPath", enabled=False)
        self.summary = Label(value="")
        self.status = Label(value="Choose an image and press Run.")
        for w in (self.summary, self.status):
            w.native.setWordWrap(True)
        self.runner = Runner(self.status, self.run_button, self.cancel_button)
        self.extend([self.image, self.where, self.shapes, self.tumour, *self.model_choice.backend_widgets,
                     self.method, self.model_file, self.score, self.stain, self.mpp,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                     self.summary, self.csv, self.save_button, self.qupath, self.qupath_kind,
                     self.qupath_button, self.status])
        self.where.changed.connect(lambda v: setattr(self.shapes, "visible", v == "drawn shapes"))
        self.method.changed.connect(self._on_method)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(lambda: self.save_csv())
        self.qupath_button.clicked.connect(lambda: self.save_qupath())
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda e=None: self.reset_choices())
        viewer.layers.events.inserted.connect(self._on_inserted)
        self.reset_choices()
        if "tumour" in viewer.layers:
            self.tumour.value = viewer.layers["tumour"]
        self._score_from_model()
        self.fit(460)

    def _on_inserted(self, event=None):
        """A tumour mask that appears after the widget opened becomes the tumour choice."""
        layer = getattr(event, "value", None)
        if (self.tumour.value is None and isinstance(layer, Labels) and layer.name.startswith("tumour")
                and layer in self.viewer.layers):
            self.tumour.value = layer

    def _score_from_model(self):
        """Start the score slider at the bundled model's validated threshold, if it has one."""
        try:
            from napari_histoseg.models.bundled import bundled_path
            from napari_histoseg.models.checkpoint import read_meta

            path = bundled_path("instances")
            if path.is_file():
                self.score.value = float(read_meta(path).preprocessing.get("score_threshold", 0.5))
        except Exception:  # noqa: BLE001 - the slider keeps 0.5
            pass

    def _on_method(self, value):
        self.model_file.visible = value == "file"
        self.score.visible = value != "classical"   # the watershed has no scores
        self.stain.visible = value != "classical"

    def _image_choices(self, _w=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _shape_choices(self, _w=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Shapes)]

    def _label_choices(self, _w=None):
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Labels) and not layer.name.startswith("nuclei")]

    # -- inputs ------------------------------------------------------------------
    def _mask_of(self, layer, shape, offset):
        """A boolean mask on the image's level-0 grid (the window at ``offset`` of ``shape``)
        from a Shapes layer or a Labels layer, wherever they lie in the world."""
        img = self.image.value
        if isinstance(layer, Shapes):
            return rasterise(layer, img, 0, (*offset, *shape[:2]))
        full_shape = level_data(img, 0).shape[:2]
        level, (y0, x0) = mask_window(layer, img)
        data = np.asarray(layer.data) > 0
        if level != 0:
            from skimage.transform import resize

            ds = level_downsample(img, level)
            y0, x0 = int(round(y0 * ds)), int(round(x0 * ds))
            data = resize(data, (round(data.shape[0] * ds), round(data.shape[1] * ds)), order=0,
                          anti_aliasing=False) > 0
        full = np.zeros(full_shape, bool)
        h, w = min(data.shape[0], full_shape[0] - y0), min(data.shape[1], full_shape[1] - x0)
        full[y0:y0 + h, x0:x0 + w] = data[:h, :w]
        return full[offset[0]:offset[0] + shape[0], offset[1]:offset[1] + shape[1]]

    def _inputs(self, layer):
        if not layer.rgb:
            raise ValueError(f"'{layer.name}' is not an RGB image; nuclei need an RGB H&E image")
        data = level_data(layer, 0)
        offset = (0, 0)
        if self.where.value == "visible area":
            y0, x0, h, w = visible_region(layer, 0)
            data, offset = data[y0:y0 + h, x0:x0 + w], (y0, x0)
        region = None
        if self.where.value == "drawn shapes":
            if self.shapes.value is None or len(self.shapes.value.data) == 0:
                raise ValueError("draw a region in a Shapes layer first (or choose another 'Where')")
            region = self._mask_of(self.shapes.value, data.shape, offset)
        elif self.where.value == "inside tumour layer":
            if self.tumour.value is None:
                raise ValueError("there is no tumour Labels layer: run 'Segment tumour' first")
            region = self._mask_of(self.tumour.value, data.shape, offset)
        if region is not None:  # crop to the region's bounding box
            ys, xs = np.nonzero(region)
            if len(ys) == 0:
                raise ValueError("the region is empty")
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            data, region = data[y0:y1, x0:x1], region[y0:y1, x0:x1]
            offset = (offset[0] + int(y0), offset[1] + int(x0))
        tumour = None
        if self.tumour.value is not None:
            tumour = self._mask_of(self.tumour.value, data.shape, offset)
        mpp = layer.metadata.get("mpp") if isinstance(layer.metadata, dict) else None
        if self.mpp.value > 0:
            from napari_histoseg.io.checks import check_float

            mpp = check_float(self.mpp.value, "µm / px", lo=0.05, hi=20)
        return np.asarray(data), offset, region, tumour, mpp

    # -- running -----------------------------------------------------------------
    def run(self):
        layer = self.image.value
        if layer is None:
            show_warning("Open an H&E image first: there is no image layer.")
            return None
        try:
            data, offset, region, tumour, mpp = self._inputs(layer)
            model_ref = str(self.model_file.value) if self.method.value == "file" else BUNDLED
            backend = None if self.method.value == "classical" else self.model_choice.backend()
        except Exception as e:  # noqa: BLE001 - shown, never raised into Qt
            show_error(f"Cannot find nuclei: {e}")
            return None
        from napari_histoseg.nuclei.regions import measure_nuclei

        place, score = placement(layer, 0, offset), self.score.value
        extra = {"stain": True} if self.stain.value else {}

        def work():
            if backend is None:
                from napari_histoseg.nuclei.baseline import detect_nuclei_classical

                labels, _ = detect_nuclei_classical(data, mpp=mpp, features=False)
            else:  # histoseg nuclei's detect_nuclei, here or on the server
                labels, _ = yield from backend.detect_nuclei(data, model_ref, mpp=mpp, score_threshold=score,
                                                             features=False, **extra)
            return measure_nuclei(labels, data, mpp=mpp, region=region, tumour=tumour)

        return self.runner.start(work(), lambda out: self._on_result(out, layer, place, mpp, offset),
                                 what="Nucleus detection", label="Finding nuclei", message="Loading the model…")

    def _on_result(self, out, layer, place, mpp, offset):
        out["table"]["centroid_y"] += offset[0]  # image pixels, not window pixels
        out["table"]["centroid_x"] += offset[1]
        self.result = {**out, "offset": offset, "mpp": mpp}
        meta = {"histoseg_source": layer.name, "method": self.method.value, "mpp": mpp,
                "histoseg_digest": mask_digest(out["labels"])}
        old, name = free_layer(self.viewer, "nuclei", Labels, lambda ly: "histoseg_digest" in ly.metadata)  # a layer a person edited is kept
        if old is not None:
            self.viewer.layers.remove(old)
        nuclei = self.viewer.add_labels(out["labels"], name=name, metadata=meta, opacity=0.5,
                                        features=out["table"], **place)
        self._default_csv(layer)
        nuclei.contour = 1
        self.summary.value = self._summary_html(out["summary"], mpp)
        self.save_button.enabled = True
        self.qupath_button.enabled = True
        return (f"Done: {int(out['labels'].max())} nuclei; their measurements are in the "
                f"'{name}' layer's features table.")

    def _default_csv(self, layer):
        """Beside the image's file (``IMAGE-nuclei.csv``), unless a path was chosen."""
        if str(self.csv.value) != str(Path.home() / "nuclei.csv"):
            return
        src = (layer.metadata or {}).get("path") or getattr(layer.source, "path", None)
        if src and Path(str(src)).parent.is_dir():
            self.csv.value = str(Path(str(src)).with_name(f"{Path(str(src)).stem}-nuclei.csv"))

    @staticmethod
    def _summary_html(summary, mpp):
        area_col = [c for c in summary.columns if c.startswith("mean_area")][0]
        unit = "µm²" if mpp else "px²"
        rows = "".join(
            f"<tr><td>{r.region}</td><td align='right'>{r.nuclei}</td>"
            f"<td align='right'>{'' if np.isnan(r.density_per_mm2) else f'{r.density_per_mm2:,.0f}'}</td>"
            f"<td align='right'>{'' if np.isnan(getattr(r, area_col)) else f'{getattr(r, area_col):.1f}'}</td></tr>"
            for r in summary.itertuples())
        note = (f"<br><i>at {mpp:.3f} µm/px; a nucleus belongs to the region holding its centre</i>" if mpp
                else "<br><i>mpp unknown (no 'mpp' in the image layer's metadata): no density; areas in px²</i>")
        return (f"<table><tr><th>region</th><th>nuclei</th><th>per mm²</th><th>mean area ({unit})</th></tr>"
                f"{rows}</table>{note}")

    def save_csv(self, path=None):
        if self.result is None:
            show_warning("Run the detection first.")
            return None
        path = str(Path(str(path or self.csv.value)).expanduser().absolute())
        try:
            self.result["table"].to_csv(path, index=False)
        except OSError as e:
            show_error(f"Cannot write {path}: {e}")
            return None
        self.status.value = f"Saved {len(self.result['table'])} rows to {path}"
        return path

    def save_qupath(self, path=None, kind=None):
        """Write the nuclei as QuPath detections (or cells) with their measurements; returns the path."""
        if self.result is None:
            show_warning("Run the detection first.")
            return None
        from napari_histoseg.core.geojson import write_nuclei_geojson

        path = str(Path(str(path or self.qupath.value)).expanduser().absolute())
        kind = kind or self.qupath_kind.value
        oy, ox = self.result["offset"]
        table = self.result["table"]
        try:
            write_nuclei_geojson(path, self.result["labels"], table, mpp=self.result["mpp"], offset=(ox, oy),
                                 object_type="cell" if kind == "cells" else "detection",
                                 provenance={"source": self.image.value.name if self.image.value else None,
                                             "method": self.method.value})
        except (OSError, ValueError) as e:
            show_error(f"Cannot write {path}: {e}")
            return None
        self.status.value = f"Saved {int(len(table))} nuclei as QuPath {kind} to {path}"
        return path
