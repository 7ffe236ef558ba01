"""The model chooser shared by the widgets: bundled default or a checkpoint file."""

from __future__ import annotations

import weakref

from magicgui.widgets import ComboBox, FileEdit

from ..backend import BUNDLED

MODEL_FILE = "checkpoint file…"


class ModelChoice:
    """Two magicgui widgets (``model``, ``model_file``) and the reference they name.

    :meth:`broadcast` points every live chooser at a new checkpoint (after fine-tuning).
    """

    _live: "weakref.WeakSet[ModelChoice]" = weakref.WeakSet()

    @classmethod
    def broadcast(cls, path) -> int:
        """Switch every widget's model to the checkpoint ``path``; returns how many."""
        choosers = list(cls._live)
        for chooser in choosers:
            chooser.use_file(path)
        return len(choosers)

    def __init__(self, on_change=None):
        ModelChoice._live.add(self)
        self.model = ComboBox(label="Model", choices=[("bundled default", BUNDLED), (MODEL_FILE, MODEL_FILE)],
                              tooltip="The bundled default model or a .safetensors checkpoint")
        self.model_file = FileEdit(label="Checkpoint", mode="r", filter="*.safetensors", visible=False)
        self.model.changed.connect(self._toggle)
        if on_change is not None:
            self.model.changed.connect(on_change)
            self.model_file.changed.connect(on_change)

    @property
    def widgets(self):
        return [self.model, self.model_file]

    def _toggle(self, _=None):
        self.model_file.visible = self.model.value == MODEL_FILE

    def use_file(self, path):
        self.model.value = MODEL_FILE
        self.model_file.value = path

    def ref(self) -> str:
        """``"bundled"`` or the checkpoint path; ValueError when no file is chosen."""
        if self.model.value == MODEL_FILE:
            path = str(self.model_file.value)
            if not path or path == "." or not path.endswith(".safetensors"):
                raise ValueError("choose a .safetensors checkpoint file for the model")
            return path
        return BUNDLED

    def meta(self):
        """The chosen checkpoint's metadata (cheap: the weights stay on disk)."""
        from ..models.checkpoint import read_meta

        ref = self.ref()
        if ref == BUNDLED:
            from ..api import bundled_model_path

            ref = bundled_model_path()
        return read_meta(ref)
