"""Subpackages that are also the public function of the same name.

``napari_histoseg.refine`` and ``napari_histoseg.explain`` are subpackages, and also the
functions ``refine(...)`` and ``explain(...)`` of DESIGN.md's public API. Importing a
subpackage makes Python set the parent's attribute to the module, which would shadow the
function; making the module callable keeps ``napari_histoseg.refine(image, seeds)``
working whichever way it was reached.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function) -> None:
    """Let the module ``module_name`` be called as ``function``."""

    class _CallableModule(types.ModuleType):
        __doc__ = sys.modules[module_name].__doc__

        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
