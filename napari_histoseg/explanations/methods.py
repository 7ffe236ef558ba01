"""Names shared by the explanation modules (no torch here)."""

METHODS = ("gradcam", "hirescam", "inputxgrad", "gradcam-ixg", "shap", "superpixel-shap",
           "entropy", "mc-dropout", "tta", "tta-entropy", "tta-boundary")
#: attribution methods (they explain a target); the others map uncertainty
UNCERTAINTIES = ("entropy", "mc-dropout", "tta", "tta-entropy", "tta-boundary")
ATTRIBUTIONS = ("gradcam", "hirescam", "inputxgrad", "gradcam-ixg", "shap", "superpixel-shap")
#: the default saliency and uncertainty methods, chosen by benchmarks/bench_explain.py
DEFAULT_SALIENCY = "gradcam-ixg"
DEFAULT_UNCERTAINTY = "tta-entropy"
TARGETS = ("mask", "all", "view")


class ExplainError(ValueError):
    """An explanation that cannot be computed as asked; the message says why and what to do."""
