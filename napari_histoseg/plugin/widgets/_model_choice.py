"""The model chooser shared by the widgets: bundled default or a checkpoint file, and
where it runs (this computer, or a ``histoseg serve`` at a URL with its token)."""

from __future__ import annotations

import weakref

from magicgui.widgets import ComboBox, FileEdit, LineEdit

from napari_histoseg.backends.local import LocalBackend
from napari_histoseg.models.bundled import BUNDLED

MODEL_FILE = "checkpoint file…"
THIS_COMPUTER, SERVER = "this computer", "a server…"
_LOCAL = [lambda: None]   # weak reference to the LocalBackend the live widgets share


def local_backend() -> LocalBackend:
    """The :class:`LocalBackend` the widgets share, so a model used by several of them
    (Segment, Explain, Classify, ...) is loaded once and held once in memory. Held weakly:
    once every widget holding it is gone, its models are freed with it."""
    backend = _LOCAL[0]()
    if backend is None:
        backend = LocalBackend()
        _LOCAL[0] = weakref.ref(backend)
    return backend


class ModelChoice:
    """Two magicgui widgets (``model``, ``model_file``) and the reference they name, and
    where the model runs (``backend_widgets``, one setting shared by every widget).

    :meth:`broadcast` points every live chooser of a tumour model at a new checkpoint (after
    fine-tuning). ``models=False``: only where it runs, for a widget that chooses its
    model of another task itself (Nuclei, Classify).
    """

    _live: "weakref.WeakSet[ModelChoice]" = weakref.WeakSet()
    _known: list = []     # checkpoints made in this session (fine-tuned): offered by every chooser
    _remotes: dict = {}   # (url, token) -> RemoteBackend, shared by the widgets
    _syncing = False

    @classmethod
    def remember(cls, path) -> None:
        """Offer the checkpoint ``path`` in every chooser (e.g. the original an adapted model
        came from, so that it stays one click away)."""
        if str(path) not in cls._known:
            cls._known.insert(0, str(path))
        for chooser in [c for c in cls._live if c.models]:
            chooser.model.reset_choices()

    @classmethod
    def broadcast(cls, path) -> int:
        """Switch every widget's model to the checkpoint ``path``; returns how many."""
        if str(path) not in cls._known:
            cls._known.append(str(path))
        choosers = [c for c in cls._live if c.models]
        for chooser in choosers:
            chooser.use_file(path)
        return len(choosers)

    def __init__(self, on_change=None, models: bool = True):
        ModelChoice._live.add(self)
        self.models = models
        self.model = ComboBox(label="Model", choices=self._choices,
                              tooltip="The bundled default model, one fine-tuned in this session, or a "
                                      ".safetensors checkpoint file")
        self.model_file = FileEdit(label="Checkpoint", mode="r", filter="*.safetensors", visible=False)
        self.model.changed.connect(self._toggle)
        self._local = None
        self.runs_on = ComboBox(label="Runs on", choices=[THIS_COMPUTER, SERVER], value=THIS_COMPUTER,
                                tooltip="Where the model runs: here, or on a GPU server started with "
                                        "`histoseg serve` (the same setting in every histoseg widget; "
                                        "device and engine are then the server's)")
        self.server_url = LineEdit(label="Server URL", value="http://127.0.0.1:8765", visible=False,
                                   tooltip="http://host:port of `histoseg serve`")
        self.server_token = LineEdit(label="Token", value="", visible=False,
                                     tooltip="The content of the server's --token-file (empty for a "
                                             "server on this computer without one)")
        self.server_token.native.setEchoMode(self.server_token.native.EchoMode.Password)
        for peer in list(ModelChoice._live - {self}):  # a new widget starts with the others' setting
            if peer._copy_backend_to(self):
                break
        self._toggle_backend()
        for w in (self.runs_on, self.server_url, self.server_token):
            w.changed.connect(self._backend_changed)
        made = [c[1] for c in self._choices()[1:-1]]
        if made and models:  # a widget opened after a fine-tune starts with the newest model, as the others
            self.use_file(made[-1])
        if on_change is not None:
            self.model.changed.connect(on_change)
            self.model_file.changed.connect(on_change)

    @staticmethod
    def _choices(_widget=None):
        from pathlib import Path

        made = [(f"{Path(p).stem} ({_kind(Path(p).stem)})", p) for p in ModelChoice._known if Path(p).is_file()]
        return [("bundled default", BUNDLED), *made, (MODEL_FILE, MODEL_FILE)]

    @property
    def widgets(self):
        return [self.model, self.model_file] if self.models else []

    @property
    def backend_widgets(self):
        return [self.runs_on, self.server_url, self.server_token]

    def _toggle(self, _=None):
        self.model_file.visible = self.model.value == MODEL_FILE

    def _toggle_backend(self):
        remote = self.runs_on.value == SERVER
        self.server_url.visible = self.server_token.visible = remote

    def _backend_changed(self, _=None):
        """One setting for every widget: copy it to the other live choosers."""
        self._toggle_backend()
        if ModelChoice._syncing:
            return
        ModelChoice._syncing = True
        try:
            for other in list(ModelChoice._live):
                if other is not self:
                    self._copy_backend_to(other)
        finally:
            ModelChoice._syncing = False

    def _copy_backend_to(self, other) -> bool:
        """Give ``other`` this setting; False (and forget the one that failed) when either's
        widgets are gone (a closed viewer)."""
        try:
            other.runs_on.value, other.server_url.value = self.runs_on.value, self.server_url.value
            other.server_token.value = self.server_token.value
            other._toggle_backend()
            return True
        except RuntimeError:  # its Qt widgets were deleted
            for dead in (self, other):
                try:
                    dead.runs_on.value  # noqa: B018 (raises once its Qt widget is deleted)
                except RuntimeError:
                    ModelChoice._live.discard(dead)
            return False

    def backend(self, local=None):
        """The backend the setting names: ``local`` (kept as this chooser's own; the shared
        :func:`local_backend` if none) for *this computer*, else a RemoteBackend for the
        URL and token (one per URL and token, shared by the widgets)."""
        if local is not None and not _is_remote(local):
            self._local = local
        if self.runs_on.value != SERVER:
            if self._local is None:
                self._local = local_backend()
            return self._local
        url, token = self.server_url.value.strip(), self.server_token.value.strip()
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the server URL must look like http://host:8765, not {url!r}")
        key = (url.rstrip("/"), token)
        if key not in ModelChoice._remotes:
            from napari_histoseg.backends.remote import RemoteBackend

            ModelChoice._remotes[key] = RemoteBackend(url, token=token or None)
        return ModelChoice._remotes[key]

    def use_file(self, path):
        """Choose the checkpoint ``path``: its own entry when it was made in this session."""
        self.model.reset_choices()
        if str(path) in [c[1] for c in self._choices()]:
            self.model.value = str(path)
        else:
            self.model.value = MODEL_FILE
        self.model_file.value = path

    def ref(self) -> str:
        """``"bundled"`` or the checkpoint path; ValueError when no file is chosen."""
        if self.model.value not in (MODEL_FILE, BUNDLED):
            return str(self.model.value)
        if self.model.value == MODEL_FILE:
            path = str(self.model_file.value)
            if not path or path == "." or not path.endswith(".safetensors"):
                raise ValueError("choose a .safetensors checkpoint file for the model")
            return path
        return BUNDLED

    def meta(self):
        """The chosen checkpoint's metadata (cheap: the weights stay on disk)."""
        from napari_histoseg.models.checkpoint import read_meta

        ref = self.ref()
        if ref == BUNDLED:
            from napari_histoseg.models.bundled import bundled_model_path

            ref = bundled_model_path()
        return read_meta(ref)


def _kind(stem: str) -> str:
    """How a checkpoint made in this session is labelled in the chooser."""
    if "-adapt" in stem:
        return "adapted to a slide"
    return "fine-tuned" if "-ft" in stem else "checkpoint"


def _is_remote(backend) -> bool:
    return type(backend).__name__ == "RemoteBackend"
