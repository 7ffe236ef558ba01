"""Screenshot of a slide review in progress (docs/screenshots/10-review.jpg).

    xvfb-run -a -s "-screen 0 1600x1000x24" python3 docs/make_review_screenshot.py

BCSS test region 1015 laid out as one slide, the bundled model's probability and mask
(cached by benchmarks/review.py in /tmp/histoseg-review-bench, else computed), a review
with fields of 512 px: eight fields gone through in entropy order, the next one inside the
slide on the canvas.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def main(out=REPO / "docs" / "screenshots" / "10-review.jpg"):
    import napari
    from qtpy.QtWidgets import QApplication
    from review import region  # benchmarks/review.py

    img, _ = region()
    cache = Path("/tmp/histoseg-review-bench/prob-1015.npy")
    if cache.is_file():
        prob = np.load(cache)
    else:
        from napari_histoseg.api import load_model
        from napari_histoseg.core.tiling import predict

        prob = np.asarray(predict(img, load_model()).probability, np.float32)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.add_image(img, name="region-1015", rgb=True)
    viewer.add_image(prob, name="tumour probability", colormap="inferno", opacity=0.5, visible=False)
    viewer.add_labels((prob >= 0.5).astype(np.uint8), name="tumour", opacity=0.45)
    _, w = viewer.window.add_plugin_dock_widget("napari-histoseg", "Review slide (field by field)")
    w.folder.value = tempfile.mkdtemp()
    w.size.value = 512
    w.reviewer.value = "A. Pathologist"
    w.start()
    for step in ["accept", "correct", "accept", "flag", "accept", "correct", "skip", "accept"]:
        if step == "correct":                      # the reviewer erases a false tumour corner
            lay = viewer.layers["review field"]
            d = lay.data.copy()
            d[: d.shape[0] // 3, : d.shape[1] // 3] = 0
            lay.data = d
        w.act("accept" if step == "correct" else step)
    H, W = prob.shape
    while not (0 < w.field.y and w.field.y + w.field.h < H and 0 < w.field.x and w.field.x + w.field.w < W):
        w.act("next")                      # on to a field inside the slide, neighbours all round
    for _ in range(10):
        QApplication.processEvents()
    viewer.camera.zoom = min(viewer.canvas.size) / (2.6 * 512)   # the field and its neighbours
    for _ in range(20):
        QApplication.processEvents()
    png = Path(tempfile.mkdtemp()) / "shot.png"
    viewer.window._qt_window.grab().save(str(png))
    from skimage.io import imread, imsave
    from skimage.transform import resize

    a = imread(png)[..., :3]
    h, wd = a.shape[:2]
    a = (resize(a, (round(h * 1400 / wd), 1400), anti_aliasing=True) * 255).astype(np.uint8)
    imsave(out, a, quality=88)
    print(out, a.shape, w.progress.value)
    viewer.close()


if __name__ == "__main__":
    main()
