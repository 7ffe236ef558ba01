"""The Nuclei dock widget: find, outline and measure every nucleus of an H&E image.

Where: the whole image, the visible area, the shapes drawn in a Shapes layer, or the
``tumour`` Labels layer (only nuclei whose centroid lies inside are kept). The result is
a Labels layer ``nuclei`` (one label per nucleus, on the image's scale and translate) whose
``features`` table holds the per-nucleus measurements; a summary per region (tumour
against the rest) is shown in the dock and the table can be saved as CSV.
"""

from __future__ import annotations

from pathlib import Path

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSlider, Label, PushButton
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning

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
from napari_histoseg.plugin.widgets._worker import Failed, TileProgress, guarded

WHERE = ["whole image", "visible area", "drawn shapes", "inside tumour layer"]
METHODS = [("Mask R-CNN (bundled model)", "model"), ("Mask R-CNN (checkpoint file)", "file"),
           ("classical watershed", "classical")]


def _job(data, offset, region, method, model_file, mpp, score_threshold, tumour):
    """Core work in the worker thread: yields (done, total), returns a result dict."""
    from napari_histoseg.nuclei.features import nucleus_features, region_summary

    rgb = np.asarray(data)
    if method == "classical":
        from napari_histoseg.nuclei.baseline import classical_labels
        from napari_histoseg.nuclei.infer import check_image

        yield 0, 1
        rgb = check_image(rgb)
        labels = classical_labels(rgb, mpp or 0.25)
        yield 1, 1
    else:
        from napari_histoseg.nuclei.infer import _rescale, check_image, iter_detect, load_nuclei_model

        rgb = check_image(rgb)
        net, meta = load_nuclei_model(model_file if method == "file" else None)
        factor = mpp / meta.mpp if (mpp and meta.mpp and abs(mpp / meta.mpp - 1) > 0.05) else 1.0
        work = _rescale(rgb, factor) if factor != 1.0 else rgb
        mask_threshold = float((meta.preprocessing or {}).get("mask_threshold", 0.5))
        labels, _ = yield from iter_detect(work, net, score_threshold=score_threshold,
                                           mask_threshold=mask_threshold)
        if factor != 1.0:
            from skimage.transform import resize

            labels = resize(labels, rgb.shape[:2], order=0, preserve_range=True, anti_aliasing=False)
    labels = np.asarray(labels).astype(np.uint32)
    if region is not None:  # keep nuclei whose centroid is inside the region
        table = nucleus_features(labels, None)
        cy = np.clip(table["centroid_y"].round().astype(int), 0, region.shape[0] - 1)
        cx = np.clip(table["centroid_x"].round().astype(int), 0, region.shape[1] - 1)
        drop = table["label"].to_numpy()[~region[cy, cx]]
        labels[np.isin(labels, drop)] = 0
    from skimage.segmentation import relabel_sequential

    labels = relabel_sequential(labels)[0].astype(np.uint32)
    table = nucleus_features(labels, rgb, mpp=mpp)
    regions = {"tumour": tumour, "rest": ~tumour} if tumour is not None else {"all": np.ones(labels.shape, bool)}
    if region is not None:
        regions = {k: v & region for k, v in regions.items()}
    table["region"] = "all"
    if tumour is not None:
        cy = np.clip(table["centroid_y"].round().astype(int), 0, tumour.shape[0] - 1)
        cx = np.clip(table["centroid_x"].round().astype(int), 0, tumour.shape[1] - 1)
        table["region"] = np.where(tumour[cy, cx], "tumour", "rest")
    summary = region_summary(table, regions, mpp)
    table["centroid_y"] += offset[0]  # image pixels, not window pixels
    table["centroid_x"] += offset[1]
    return {"labels": labels, "table": table, "summary": summary}


class NucleiWidget(Scrolling, Container):
    """Choose an image, where to look and the detector; Run works in a worker, Cancel stops it."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self.worker = None
        self.result = None
        self._progress = TileProgress("Finding nuclei")
        self.image = ComboBox(label="Image", choices=self._image_choices, tooltip="The H&E image layer")
        self.where = ComboBox(label="Where", choices=WHERE, value="whole image",
                              tooltip="drawn shapes: the polygons/rectangles of the Shapes layer below; "
                                      "inside tumour layer: nuclei whose centre lies in 'tumour'")
        self.shapes = ComboBox(label="Shapes", choices=self._shape_choices, visible=False)
        self.tumour = ComboBox(label="Tumour mask", choices=self._label_choices, nullable=True,
                               tooltip="Labels layer (non-zero = tumour) for the tumour vs rest summary")
        self.method = ComboBox(label="Detector", choices=METHODS, value="model")
        self.model_file = FileEdit(label="Checkpoint", filter="*.safetensors", visible=False)
        self.score = FloatSlider(label="Min. score", min=0.05, max=0.95, step=0.05, value=0.5,
                                 tooltip="Detections below this confidence are dropped")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.csv = FileEdit(label="CSV", mode="w", filter="*.csv", value=str(Path.home() / "nuclei.csv"),
                            tooltip="Where the per-nucleus table goes (default: beside the image's file)")
        self.save_button = PushButton(text="Save features as CSV", enabled=False)
        self.summary = Label(value="")
        self.status = Label(value="Choose an image and press Run.")
        for w in (self.summary, self.status):
            w.native.setWordWrap(True)
        self.extend([self.image, self.where, self.shapes, self.tumour, self.method, self.model_file, self.score,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                     self.summary, self.csv, self.save_button, self.status])
        self.where.changed.connect(lambda v: setattr(self.shapes, "visible", v == "drawn shapes"))
        self.method.changed.connect(self._on_method)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(lambda: self.save_csv())
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
            from napari_histoseg.models.checkpoint import read_meta
            from napari_histoseg.nuclei.infer import BUNDLED

            if BUNDLED.is_file():
                self.score.value = float(read_meta(BUNDLED).preprocessing.get("score_threshold", 0.5))
        except Exception:  # noqa: BLE001 - the slider keeps 0.5
            pass

    def _on_method(self, value):
        self.model_file.visible = value == "file"
        self.score.visible = value != "classical"   # the watershed has no scores

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
        full_shape = level_data(img, 0).shape[:2]
        if isinstance(layer, Shapes):
            px = [((np.asarray(v)[:, -2:] * layer.scale[-2:] + layer.translate[-2:]) - img.translate[-2:])
                  / img.scale[-2:] for v in layer.data]
            m = Shapes(px, shape_type=layer.shape_type).to_masks(mask_shape=np.asarray(full_shape))
            full = np.asarray(m).any(axis=0)
        else:
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
        return np.asarray(data), offset, region, tumour, mpp

    # -- running -----------------------------------------------------------------
    def run(self):
        layer = self.image.value
        if layer is None:
            show_warning("Open an H&E image first: there is no image layer.")
            return None
        if self.worker is not None:
            show_info("Nucleus detection is already running.")
            return None
        try:
            data, offset, region, tumour, mpp = self._inputs(layer)
            model_file = str(self.model_file.value) if self.method.value == "file" else None
        except Exception as e:  # noqa: BLE001 - shown, never raised into Qt
            show_error(f"Cannot find nuclei: {e}")
            return None
        place = placement(layer, 0, offset)
        worker = thread_worker(guarded, start_thread=False)(
            _job, data, offset, region, self.method.value, model_file, mpp, self.score.value, tumour)
        worker.yielded.connect(lambda v: self._on_progress(v, worker))
        worker.returned.connect(lambda out: self._on_result(out, layer, place, mpp))
        worker.errored.connect(lambda e: self._finish(f"Failed: {e}"))
        worker.aborted.connect(self._on_cancelled)
        self.worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "Loading the model…"
        worker.start()
        return worker

    def _on_progress(self, value, worker):
        if worker is self.worker:  # a late progress signal never overwrites the final status
            self.status.value = self._progress.update(value) or self.status.value

    def cancel(self):
        if self.worker is not None:
            self.status.value = "Cancelling…"
            self.worker.quit()

    def _on_result(self, out, layer, place, mpp):
        if isinstance(out, Failed):
            show_error(f"Nucleus detection failed: {out.error}")
            self._finish(f"Failed: {out.error}")
            return
        self.result = out
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
        self._finish(f"Done: {int(out['labels'].max())} nuclei; their measurements are in the "
                     f"'{name}' layer's features table.")
        return nuclei

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

    def _on_cancelled(self):
        self._finish("Cancelled; the layers were left as they were.")
        show_info("Nucleus detection cancelled.")

    def _finish(self, message):
        self._progress.close()
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.status.value = message
