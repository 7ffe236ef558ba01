"""napari dock widgets: thin translators between layers and the core."""

from .segment import SegmentWidget

__all__ = ["SegmentWidget"]
