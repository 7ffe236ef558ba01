"""napari dock widgets: thin translators between layers and the core."""

from .._triton_guard import guard as _guard

_guard()  # see napari_histoseg._triton_guard

from .segment import SegmentWidget  # noqa: E402

__all__ = ["SegmentWidget"]
