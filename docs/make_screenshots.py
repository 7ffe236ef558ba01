"""Screenshots of each step of the correction loop, on the bundled sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" python3 docs/make_screenshots.py [OUTDIR]

Writes OUTDIR/NN-step.jpg (default docs/screenshots). Every widget is opened through
napari's plugin machinery (``add_plugin_dock_widget``), as the Plugins menu does. Budgets
are tiny (one fine-tune epoch of a few steps): the pictures show the workflow, not a
good model.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-histoseg"
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "screenshots"


def wait(cond, timeout=600):
    t0 = time.time()
    while not cond():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("step took too long")


def settle(seconds=0.6):
    t0 = time.time()
    while time.time() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.02)


class Shots:
    def __init__(self, viewer):
        self.viewer, self.dock, self.n = viewer, None, 0

    def open(self, name):
        if self.dock is not None:
            self.viewer.window.remove_dock_widget(self.dock)
        self.dock, widget = self.viewer.window.add_plugin_dock_widget(PLUGIN, name)
        settle(0.3)
        return widget

    def take(self, step):
        self.n += 1
        settle()
        path = OUT / f"{self.n:02d}-{step}.jpg"
        # JPEG at 1400 px wide keeps the docs small (~0.2 MB a picture, not 1.5 MB as PNG)
        self.viewer.window._qt_window.grab().scaledToWidth(1400, Qt.TransformationMode.SmoothTransformation).save(
            str(path), "JPG", 85)
        print("wrote", path)


def stroke(seeds, y, x0, x1, label):
    seeds.selected_label, seeds.brush_size = label, 15
    for x in range(x0, x1, 4):
        seeds.paint((y, x), label, refresh=True)


def main():
    import torch

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="histoseg-shots-"))
    viewer = napari.Viewer(title="napari-histoseg")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.window._qt_window.move(0, 0)
    image = viewer.open_sample(PLUGIN, "breast_carcinoma")[0]
    shots = Shots(viewer)
    viewer.reset_view()

    seg = shots.open("Segment tumour")
    seg.image.value = image
    seg.run()
    wait(lambda: seg.worker is None)
    viewer.layers.selection.active = viewer.layers["tumour"]
    shots.take("segment")

    ref = shots.open("Refine tumour boundary")
    ref.start()
    wait(lambda: ref.session is not None)
    tumour = viewer.layers["tumour"]
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(tumour.data == 0)
    dist[:80] = dist[-80:] = dist[:, :80] = dist[:, -80:] = 0
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    stroke(viewer.layers["seeds"], int(y), int(x) - 40, int(x) + 40, 1)
    wait(lambda: ref._worker is None and not ref._pending)
    ys, xs = np.nonzero(tumour.data)
    i = len(ys) // 3
    stroke(viewer.layers["seeds"], int(ys[i]), int(xs[i]) - 10, int(xs[i]) + 10, 2)
    wait(lambda: ref._worker is None and not ref._pending)
    shots.take("refine")

    ref.accept()
    seg = shots.open("Segment tumour")
    seg.image.value = image
    seg.run()
    wait(lambda: seg.worker is None)
    viewer.layers["tumour [2]"].visible = False
    viewer.layers.selection.active = tumour
    shots.take("accept-and-rerun")

    exp = shots.open("Export and measure")
    exp.image.value, exp.mask.value = image, tumour
    exp.dataset.value = work / "corrections"
    exp.tile.value = 512
    exp.export()
    wait(lambda: exp.worker is None)
    exp.measure()
    shots.take("export")

    ft = shots.open("Fine-tune the model")
    ft.dataset.value = work / "corrections"
    ft.epochs.value, ft.steps.value, ft.budget.value = 1, 6, 2
    ft.run()
    wait(lambda: ft.worker is None or "loss" in str(ft.status.value))
    if ft.worker is not None:
        activity = viewer.window._qt_window._activity_dialog  # napari's progress bars
        activity.show()
        activity.raise_()
        shots.take("finetune-progress")
        activity.hide()
    wait(lambda: ft.worker is None)
    seg = shots.open("Segment tumour")
    seg.image.value = image
    seg.run()
    wait(lambda: seg.worker is None)
    tumour.visible = False
    viewer.layers["tumour [2]"].visible = True
    viewer.layers.selection.active = viewer.layers["tumour [2]"]
    shots.take("resegment-finetuned")
    tumour.visible = True
    viewer.layers["tumour [2]"].visible = False

    nuc = shots.open("Nuclei (Mask R-CNN)")
    nuc.image.value = image
    viewer.camera.center = (500, 500)
    viewer.camera.zoom = viewer.camera.zoom * 2.5
    nuc.where.value = "visible area"
    nuc.run()
    wait(lambda: nuc.worker is None)
    shots.take("nuclei")
    if "nuclei" in viewer.layers:
        viewer.layers["nuclei"].visible = False
    viewer.reset_view()

    cls = shots.open("Classify benign or malignant")
    cls.image.value = image
    cls.what.value = "tumour"
    cls.tumour.value = tumour
    cls.run()
    wait(lambda: cls.worker is None)
    shots.take("classify")
    for name in ("classification", "classification labels", "classifier Grad-CAM"):
        if name in viewer.layers:
            viewer.layers[name].visible = False

    exl = shots.open("Explain (Grad-CAM, SHAP, uncertainty)")
    exl.image.value = image
    exl.method.value = "gradcam"
    exl.region.value = "whole image"
    exl.run()
    wait(lambda: exl.worker is None)
    tumour.visible = False
    shots.take("explain")
    viewer.close()


if __name__ == "__main__":
    main()
