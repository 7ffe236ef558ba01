"""Names shared by the explanation modules (no torch here)."""

METHODS = ("gradcam", "shap", "entropy", "mc-dropout")
TARGETS = ("mask", "all", "view")


class ExplainError(ValueError):
    """An explanation that cannot be computed as asked; the message says why and what to do."""
