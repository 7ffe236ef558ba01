"""Shared fixtures. Real data is read from ../shared beside the checkout; tests that
need it skip with a reason where it is absent. The synthetic builders (images, models,
training-data folders of every task) are in :mod:`napari_histoseg.testing`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histoseg import testing

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__import__("os").environ.get("HISTOSEG_SHARED", REPO.parent / "shared"))


def shared_path(*parts) -> Path:
    """A path under ../shared, or skip the test when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not here (../shared holds the real data and weights)")
    return path


@pytest.fixture(scope="session")
def he_image() -> np.ndarray:
    """The bundled 1000 x 1000 breast carcinoma sample, RGB uint8."""
    return testing.he_image()


@pytest.fixture(scope="session")
def random_model():
    """A randomly initialised default architecture on the CPU (no weights needed)."""
    return testing.random_segmenter("unet-mobilenet_v2", seed=0, device="cpu")


@pytest.fixture
def random_checkpoint(tmp_path, random_model):
    """The random model saved as a .safetensors checkpoint with small tiles."""
    return testing.save_random_checkpoint(tmp_path / "random.safetensors", random_model, tile_size=256)


@pytest.fixture(autouse=True)
def _fresh_backend_setting():
    """Each test starts with every widget running on this computer: the "Runs on" setting
    is shared by all live choosers in a process, and a chooser from an earlier test's
    closed viewer may outlive it."""
    yield
    import sys

    mod = sys.modules.get("napari_histoseg.plugin.widgets._model_choice")
    if mod is not None:
        mod.ModelChoice._live.clear()
        mod.ModelChoice._remotes.clear()


@pytest.fixture(autouse=True)
def _no_models_from_earlier_tests():
    """The fine-tuned models a chooser offers are those of this test only."""
    yield
    import sys

    mod = sys.modules.get("napari_histoseg.plugin.widgets._model_choice")
    if mod is not None:
        mod.ModelChoice._known.clear()
