"""napari dock widgets: thin translators between layers and the core."""

from napari_histoseg.core.triton_guard import guard as _guard

_guard()  # see napari_histoseg.core.triton_guard

from napari_histoseg.plugin.widgets.segment import SegmentWidget  # noqa: E402

__all__ = ["SegmentWidget"]
