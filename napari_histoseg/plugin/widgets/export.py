"""The Export & measure dock widget: training tiles, QuPath GeoJSON, tumour measurements."""

from __future__ import annotations

import json
from pathlib import Path

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QTableWidget, QTableWidgetItem

from napari_histoseg.plugin.widgets._layers import (
    Scrolling,
    level_downsample,
    mask_window,
    tumour_colormap,
    unwrap,
)
from napari_histoseg.plugin.widgets._runner import Runner, RunsWork


class ExportWidget(RunsWork, Scrolling, Container):
    """Export the corrected mask as training tiles or QuPath GeoJSON, import GeoJSON,
    and measure the tumour (area in µm², fraction of the tissue, regions)."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self.image = ComboBox(label="Image", choices=self._choices(Image, rgb=True))
        self.mask = ComboBox(label="Mask", choices=self._choices(Labels))
        self.dataset = FileEdit(label="Dataset folder", mode="d",
                                tooltip="A training-data folder (new or existing: tiles are added or replaced)")
        self.tile = SpinBox(label="Tile (px)", min=64, max=4096, step=64, value=512)
        self.only_edited = CheckBox(text="Only tiles a person edited", value=False)
        self.annotator = LineEdit(label="Annotator", value="", tooltip="Recorded with each tile")
        self.export_button = PushButton(text="Export training tiles")
        self.save_geojson = PushButton(text="Save GeoJSON…")
        self.load_geojson = PushButton(text="Import GeoJSON…")
        self.measure_button = PushButton(text="Measure tumour")
        self.save_csv = PushButton(text="Save CSV…", enabled=False)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["measure", "value", "unit"])
        self.table.setMinimumHeight(300)  # every measure shows without scrolling
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.runner = Runner(self.status, self.export_button)
        row = lambda *w: Container(widgets=list(w), layout="horizontal", labels=False)  # noqa: E731
        self.extend([self.image, self.mask, self.dataset, self.tile, self.only_edited, self.annotator,
                     self.export_button, row(self.save_geojson, self.load_geojson),
                     row(self.measure_button, self.save_csv)])
        self.body.layout().addWidget(self.table)
        self.append(self.status)
        self.fit(460)
        self.result = None
        self.export_button.clicked.connect(self.export)
        self.save_geojson.clicked.connect(lambda: self.write_geojson())
        self.load_geojson.clicked.connect(lambda: self.read_geojson())
        self.measure_button.clicked.connect(self.measure)
        self.save_csv.clicked.connect(lambda: self.write_csv())
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda e=None: self.reset_choices())
        if "tumour" in viewer.layers:
            self.mask.value = viewer.layers["tumour"]

    def _choices(self, kind, rgb=False):
        return lambda _w=None: [(ly.name, ly) for ly in self.viewer.layers
                                if isinstance(ly, kind) and ly.name != "seeds" and (not rgb or ly.rgb)]

    def _where(self):
        """image layer, mask layer, level, (y0, x0) of the mask in the level, mpp of the level."""
        image, mask = self.image.value, self.mask.value
        if image is None or mask is None:
            raise ValueError("choose the image and its tumour mask")
        level, yx = mask_window(mask, image)
        mpp = image.metadata.get("mpp")
        mpp = None if mpp is None else float(mpp) * level_downsample(image, level)
        return image, mask, level, yx, mpp

    # -- training tiles -------------------------------------------------------------
    def export(self):
        try:
            image, mask, level, (y0, x0), mpp = self._where()
            out = Path(str(self.dataset.value))
            if str(self.dataset.value) in ("", "."):
                raise ValueError("choose a dataset folder")
            h, w = mask.data.shape
            from napari_histoseg.plugin.widgets._layers import level_data

            rgb = level_data(image, level)[y0:y0 + h, x0:x0 + w]
            edits = mask.metadata.get("histoseg_edits")
            if self.only_edited.value and edits is None:
                raise ValueError("no edits are recorded on this mask: refine it and press Accept first")
            kwargs = dict(tile=self.tile.value, only_edited=self.only_edited.value, edits=edits,
                          source=image.metadata.get("path"), level=level, mpp=mpp,
                          model=mask.metadata.get("model"), annotator=self.annotator.value or None,
                          x0=x0, y0=y0)
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot export: {e}")
            return None
        from napari_histoseg.tumour.export import export_tiles

        return self.runner.start(lambda *_: export_tiles(np.asarray(rgb), np.asarray(mask.data), out, **kwargs),
                                 lambda tiles: self._exported(tiles, out),
                                 what="Export", message="Exporting…",
                                 failed="the dataset was left as it was")

    def _exported(self, tiles, out):
        show_info(f"{len(tiles)} tile(s) written to {out}")
        return f"{len(tiles)} tile(s) written to {out}"

    # -- GeoJSON ----------------------------------------------------------------------
    def write_geojson(self, path=None):
        try:
            image, mask, level, (y0, x0), _ = self._where()
            path = path or QFileDialog.getSaveFileName(self.native, "Save GeoJSON", "", "GeoJSON (*.geojson)")[0]
            if not path:
                return None
            from napari_histoseg.core.geojson import mask_to_geojson

            ds = level_downsample(image, level)
            fc = mask_to_geojson(np.asarray(mask.data), offset=(x0 * ds, y0 * ds), scale=ds)
            Path(path).write_text(json.dumps(fc))
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot write GeoJSON: {e}")
            return None
        self.status.value = f"{len(fc['features'])} tumour region(s) written to {path} (QuPath: File › Import objects)"
        return path

    def read_geojson(self, path=None):
        try:
            image, mask, level, (y0, x0), _ = self._where()
            path = path or QFileDialog.getOpenFileName(self.native, "Import GeoJSON", "", "GeoJSON (*.geojson *.json)")[0]
            if not path:
                return None
            from napari_histoseg.core.geojson_import import geojson_to_mask_report

            ds = level_downsample(image, level)
            labels, skipped = geojson_to_mask_report(path, mask.data.shape, offset=(x0 * ds, y0 * ds), scale=ds)
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot import GeoJSON: {e}")
            return None
        layer = self.viewer.add_labels(labels, name=f"{Path(path).stem} (GeoJSON)", scale=mask.scale,
                                       translate=mask.translate, opacity=0.45)
        layer.colormap = tumour_colormap()
        self.status.value = f"Imported {path}" + (f"; left out: {skipped}" if skipped else "")
        return layer

    # -- measurements ---------------------------------------------------------------
    def measure(self):
        try:
            image, mask, level, (y0, x0), mpp = self._where()
            from napari_histoseg.plugin.widgets._layers import level_data
            from napari_histoseg.tumour.quantify import quantify, rows

            h, w = mask.data.shape
            rgb = np.asarray(level_data(image, level)[y0:y0 + h, x0:x0 + w])
            self.result = quantify(np.asarray(mask.data), image=rgb, mpp=mpp)
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot measure: {e}")
            return None
        table = [r for r in rows(self.result, regions=False) if r[0] != "warning"]  # warnings: status line
        self.table.setRowCount(len(table))
        for i, row in enumerate(table):
            for j, value in enumerate(row):
                text = f"{value:,.4g}" if isinstance(value, float) else ("–" if value is None else str(value))
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.save_csv.enabled = True
        warnings = self.result.get("warnings") or []
        self.status.value = " · ".join(w.rstrip(".") for w in warnings) or f"{self.result['n_regions']} tumour region(s)."
        return self.result

    def write_csv(self, path=None):
        if self.result is None:
            return None
        path = path or QFileDialog.getSaveFileName(self.native, "Save measurements", "", "CSV (*.csv)")[0]
        if not path:
            return None
        from napari_histoseg.tumour.quantify import to_csv

        try:
            to_csv(self.result, path)
        except OSError as e:
            show_error(f"Cannot write {path}: {e}")
            return None
        self.status.value = f"Measurements written to {path}"
        return path
