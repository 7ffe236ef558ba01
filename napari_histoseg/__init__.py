"""napari-histoseg: tumour segmentation of H&E histopathology, with interactive refinement.

Public API (plain numpy in, numpy out)::

    from napari_histoseg import load_model, segment
    model = load_model()                 # the bundled default model
    prob = segment(rgb, model)           # float32 tumour probability, (H, W)
"""

__version__ = "0.1.0"

from .api import load_model, segment  # noqa: E402

__all__ = ["__version__", "load_model", "segment"]
