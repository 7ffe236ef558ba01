"""Nuclei: Mask R-CNN instances, tiled inference with border de-duplication, per-nucleus features.

>>> from napari_histoseg.nuclei import detect_nuclei      # doctest: +SKIP
>>> labels, table = detect_nuclei(rgb, mpp=0.25)          # doctest: +SKIP
"""


def __getattr__(name):
    if name in ("detect_nuclei", "load_nuclei_model"):
        from napari_histoseg.nuclei import infer

        return getattr(infer, name)
    if name == "detect_nuclei_classical":
        from napari_histoseg.nuclei.baseline import detect_nuclei_classical

        return detect_nuclei_classical
    raise AttributeError(f"module 'napari_histoseg.nuclei' has no attribute {name!r}")


__all__ = ["detect_nuclei", "load_nuclei_model", "detect_nuclei_classical"]
