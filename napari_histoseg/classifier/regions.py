"""Benign or malignant for several regions of one image, with an optional Grad-CAM map.

What the Classify widget runs: each region is classified on its own
(:func:`napari_histoseg.classifier.infer.classify_region`); a region the classifier refuses
(too small, not H&E) is reported with the reason and the others go on.
"""

from __future__ import annotations

import numpy as np


def iter_classify_regions(image, items, model=None, mpp=None, gradcam: bool = True):
    """Classify each region of ``image``; a generator yielding ``(done, total)`` steps.

    ``items``: ``(name, (y0, x0, h, w), mask or None)`` per region, the box in pixels of
    ``image`` and the mask over the box. ``model``: a classifier checkpoint path (None or
    empty: the bundled one). ``gradcam``: also the classifier's Grad-CAM of the predicted
    class over each region, in one map over the regions' union box.

    Returns ``(model, results, heat)``: ``results`` holds ``(name, box, mask, Classification
    or the reason it was refused)``; ``heat`` is ``((y0, x0) of the union box, map)`` or None.
    """
    from napari_histoseg.classifier.infer import (
        ClassifierInputError,
        classify_region,
        explain_region,
        load_classifier,
    )

    model = load_classifier(model or None)
    total = len(items) * (2 if gradcam else 1)
    results, done = [], 0
    if gradcam and items:
        uy0 = min(b[0] for _, b, _ in items)
        ux0 = min(b[1] for _, b, _ in items)
        uy1 = max(b[0] + b[2] for _, b, _ in items)
        ux1 = max(b[1] + b[3] for _, b, _ in items)
        heat = np.zeros((uy1 - uy0, ux1 - ux0), np.float32)
    yield 0, total
    for name, (y0, x0, h, w), mask in items:
        crop = np.asarray(image[y0:y0 + h, x0:x0 + w])
        try:
            r = classify_region(crop, model, mask, mpp, what=name)
        except ClassifierInputError as e:
            results.append((name, (y0, x0, h, w), mask, str(e)))
            done += 2 if gradcam else 1
            yield done, total
            continue
        results.append((name, (y0, x0, h, w), mask, r))
        done += 1
        yield done, total
        if gradcam:
            cam = explain_region(crop, model, mask, mpp)
            sub = heat[y0 - uy0:y0 - uy0 + h, x0 - ux0:x0 - ux0 + w]
            np.maximum(sub, cam, out=sub)
            done += 1
            yield done, total
    return model, results, ((uy0, ux0), heat) if gradcam and items else None
