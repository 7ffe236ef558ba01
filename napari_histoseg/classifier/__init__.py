"""Benign/malignant classification of an H&E image or region, calibrated.

>>> from napari_histoseg.classifier import classify          # doctest: +SKIP
>>> probs = classify(rgb, region=mask, mpp=0.25)             # doctest: +SKIP
>>> probs = classify(field, magnification="400x")            # doctest: +SKIP
>>> probs                     # calibrated [P(benign), P(malignant)]  # doctest: +SKIP

Modules: ``data`` (folder, patient split, augmentation), ``train`` (time-budgeted
training + temperature scaling), ``calibration`` (temperature, ECE), ``metrics``
(image-, patient- and subtype-level figures), ``infer`` (tiles over a region at one
of the model's trained scales, H&E plausibility), ``magnification`` (a stated
magnification, the nucleus-size estimate), ``zoom`` (higher magnifications simulated
from lower ones, for training and ``histoseg evaluate --simulate-magnification``), ``cli``. Names are imported lazily: importing this
package (as the CLI does) does not import torch.
"""

__all__ = ["classify", "classify_regions", "load_classifier", "train_classifier",
           "evaluate_classifier", "ClassifierInputError"]


def __getattr__(name):
    if name in ("classify", "classify_regions", "load_classifier", "ClassifierInputError"):
        from napari_histoseg.classifier import infer

        return getattr(infer, name)
    if name == "train_classifier":
        from napari_histoseg.classifier.train import train_classifier

        return train_classifier
    if name == "evaluate_classifier":
        from napari_histoseg.classifier.evaluate import evaluate_classifier

        return evaluate_classifier
    raise AttributeError(f"module 'napari_histoseg.classifier' has no attribute {name!r}")
