"""napari-histoseg: tumour segmentation of H&E histopathology, with interactive refinement.

Public API (plain numpy in, numpy out):

>>> from napari_histoseg import load_model, segment, refine, explain   # doctest: +SKIP
>>> model = load_model()                     # the bundled default model  # doctest: +SKIP
>>> prob = segment(rgb, model)               # float32 tumour probability (H, W)  # doctest: +SKIP
>>> labels = refine(rgb, seeds, prior=prob)  # seeds: 0 none, 1 tumour, 2 not  # doctest: +SKIP
>>> heat = explain(rgb, model, "gradcam")    # doctest: +SKIP

The names are imported lazily: importing the package (as napari does for the reader
and the sample data) does not import torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "segment", "refine", "explain", "detect_nuclei", "classify"]


def __getattr__(name):
    if name in ("load_model", "segment"):
        from napari_histoseg import api

        return getattr(api, name)
    if name == "explain":
        from napari_histoseg.explanations import explain

        return explain
    if name == "refine":
        from napari_histoseg.refinement import refine

        return refine
    if name == "detect_nuclei":
        from napari_histoseg.nuclei import detect_nuclei

        return detect_nuclei
    if name == "classify":
        from napari_histoseg.classifier import classify

        return classify
    raise AttributeError(f"module 'napari_histoseg' has no attribute {name!r}")
