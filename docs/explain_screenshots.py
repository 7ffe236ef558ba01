"""Screenshots of every Explain map over H&E, with the model's mask outlined above it.

    xvfb-run -a -s "-screen 0 1600x1000x24" python3 docs/explain_screenshots.py [OUTDIR]

A 768 x 768 px view (``--size=N``; ``--methods=a,b`` for some maps only) of the BCSS test region 1015 (../shared/data/bcss; skipped where it is
absent), segmented by the bundled model (its mask as a Labels layer, outline only), then each
method of the Explain widget run through the widget itself (whole image, target: predicted
tumour). Writes OUTDIR/11-explain.jpg (the default saliency), OUTDIR/12-explain-uncertainty.jpg
(the default uncertainty) and OUTDIR/13-explain-METHOD.jpg for the others, 1400 px wide; then
OUTDIR/09-explain.jpg: Grad-CAM on the bundled sample, as the correction-loop pictures of
docs/make_screenshots.py show it (``--only-09`` makes that one alone, ``--skip-09`` skips it).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication
from skimage.io import imread

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HISTOSEG_SHARED", REPO.parent / "shared"))
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
#: ``--methods=a,b``: only these maps; ``--size=N``: an N x N view (default 768)
OPTS = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
OUT = Path(ARGS[0]) if ARGS else Path(__file__).parent / "screenshots"


def settle(seconds=0.6):
    t0 = time.time()
    while time.time() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.02)


def view():
    d = SHARED / "data" / "bcss" / "images"
    ids = [["region-1015-y0-x0", "region-1015-y0-x512"], ["region-1015-y512-x0", "region-1015-y512-x512"]]
    full = np.concatenate([np.concatenate([imread(d / f"{i}.png")[..., :3] for i in row], 1) for row in ids], 0)
    n = int(OPTS.get("size", 768))
    y0 = (1024 - n) // 2
    return np.ascontiguousarray(full[y0:y0 + n, y0:y0 + n])


def wait_run(w):
    worker = w.run()
    while worker is not None and w.worker is not None:
        QApplication.processEvents()
        time.sleep(0.05)
    settle()


def shot(viewer, name):
    settle()
    viewer.window._qt_window.grab().scaledToWidth(1400, Qt.TransformationMode.SmoothTransformation).save(
        str(OUT / f"{name}.jpg"), "JPG", 85)
    print("wrote", OUT / f"{name}.jpg", flush=True)


def sample_gradcam():
    """09-explain: Grad-CAM of the bundled model on the bundled sample, mask outlined above it."""
    viewer = napari.Viewer(title="napari-histoseg")
    viewer.window._qt_window.resize(1600, 1000)
    image = viewer.open_sample("napari-histoseg", "breast_carcinoma")[0]
    viewer.reset_view()
    _, seg = viewer.window.add_plugin_dock_widget("napari-histoseg", "Segment tumour")
    seg.image.value = image
    wait_run(seg)
    for ly in viewer.layers:
        if ly.name != "tumour" and ly is not image:
            ly.visible = False
    viewer.layers["tumour"].contour = 2
    _, w = viewer.window.add_plugin_dock_widget("napari-histoseg", "Explain (Grad-CAM, SHAP, uncertainty)")
    w.image.value, w.method.value, w.region.value = image, "gradcam", "whole image"
    wait_run(w)
    viewer.layers.selection.active = viewer.layers["explain: Grad-CAM"]
    shot(viewer, "09-explain")
    viewer.close()


def main():
    if "--only-09" in sys.argv:
        return sample_gradcam()
    if not (SHARED / "data" / "bcss").is_dir():
        print(f"skipped: {SHARED / 'data' / 'bcss'} is not here")
        return 0
    import torch

    torch.set_num_threads(1)
    from napari_histoseg.explanations.methods import DEFAULT_SALIENCY, DEFAULT_UNCERTAINTY
    from napari_histoseg.models.segmenter import load_segmenter
    from napari_histoseg.plugin.widgets.explain import METHODS

    rgb = view()
    mask = (load_segmenter(None, device="cpu").predict(rgb[None])[0, 0] >= 0.5).astype(np.uint8)
    viewer = napari.Viewer(title="napari-histoseg")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.add_image(rgb, name="H&E", rgb=True)
    labels = viewer.add_labels(mask, name="tumour (model)", opacity=0.9)
    labels.contour = 2
    dock, w = viewer.window.add_plugin_dock_widget("napari-histoseg", "Explain (Grad-CAM, SHAP, uncertainty)")
    settle(0.5)
    w.region.value = "whole image"
    wanted = OPTS.get("methods", "").split(",") if OPTS.get("methods") else [m for _, m in METHODS]
    for title, method in METHODS:
        if method not in wanted:
            continue
        w.method.value = method
        settle(0.2)
        t0 = time.time()
        worker = w.run()
        while w.worker is not None or worker is None:
            QApplication.processEvents()
            time.sleep(0.05)
            worker = worker or True
        print(f"{method}: {time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)
        for ly in viewer.layers:
            if ly.name.startswith("explain: "):
                ly.visible = ly.name == f"explain: {title}"
        if f"explain: {title}" in viewer.layers:
            viewer.layers.selection.active = viewer.layers[f"explain: {title}"]
        name = ("11-explain" if method == DEFAULT_SALIENCY else
                "12-explain-uncertainty" if method == DEFAULT_UNCERTAINTY else f"13-explain-{method}")
        shot(viewer, name)
    viewer.close()
    if "--skip-09" not in sys.argv:
        sample_gradcam()
    return 0


if __name__ == "__main__":
    sys.exit(main())
