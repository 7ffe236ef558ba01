"""Benign or malignant for several regions of one image, with an optional Grad-CAM map.

What the Classify widget runs: each region is classified on its own
(:func:`napari_histoseg.classifier.infer.classify_region`); a region the classifier refuses
(too small, not H&E) is reported with the reason and the others go on.
"""

from __future__ import annotations

import numpy as np

from napari_histoseg.core.runs import drive


def iter_classify_regions(image, items, classify, explain=None, refused=()):
    """Classify each region of ``image``; a generator yielding ``(done, total)`` steps.

    ``items``: ``(name, (y0, x0, h, w), mask or None)`` per region, the box in pixels of
    ``image`` and the mask over the box. ``classify(crop, mask, name)``: a generator (as a
    backend's ``classify``) returning the region's
    :class:`~napari_histoseg.classifier.infer.Classification`; an exception of one of the
    types ``refused`` (besides :class:`~napari_histoseg.classifier.infer.ClassifierInputError`)
    refuses that region only. ``explain(crop, mask)``: its Grad-CAM map, or None for no map.

    Returns ``(results, heat)``: ``results`` holds ``(name, box, mask, Classification or the
    reason it was refused)``; ``heat`` is ``((y0, x0) of the union box, map)`` or None.
    """
    from napari_histoseg.classifier.infer import ClassifierInputError

    refused = (ClassifierInputError, *refused)
    steps = 2 if explain is not None else 1
    total = len(items) * steps
    results, done, heat = [], 0, None
    if explain is not None and items:
        uy0 = min(b[0] for _, b, _ in items)
        ux0 = min(b[1] for _, b, _ in items)
        uy1 = max(b[0] + b[2] for _, b, _ in items)
        ux1 = max(b[1] + b[3] for _, b, _ in items)
        heat = np.zeros((uy1 - uy0, ux1 - ux0), np.float32)
    yield 0, total
    for name, (y0, x0, h, w), mask in items:
        crop = np.asarray(image[y0:y0 + h, x0:x0 + w])
        try:
            r = drive(classify(crop, mask, name))  # one step per region
        except refused as e:
            results.append((name, (y0, x0, h, w), mask, str(e)))
            done += steps
            yield done, total
            continue
        results.append((name, (y0, x0, h, w), mask, r))
        done += 1
        yield done, total
        if explain is not None:
            sub = heat[y0 - uy0:y0 - uy0 + h, x0 - ux0:x0 - ux0 + w]
            np.maximum(sub, explain(crop, mask), out=sub)
            done += 1
            yield done, total
    return results, ((uy0, ux0), heat) if heat is not None else None

