"""Many clients at once on loopback, mixing good requests, bad ones and unauthenticated large
bodies: every good answer right, every bad one a 4xx, every unauthenticated one a 401, and the
process's memory does not grow with the bodies nobody was allowed to send. (The full-size run,
16 clients x 10 requests with 250 MB bodies, is ``benchmarks/bench_serve.py --mixed``.)"""

from __future__ import annotations

import numpy as np
import pytest

from napari_histoseg.server.app import ServerConfig, create_app
from napari_histoseg.server.loadtest import mixed_load
from napari_histoseg.server.thread import ServerThread

pytestmark = pytest.mark.filterwarnings("ignore")
TOKEN = "load-token-0123456789abcdef"


def test_mixed_load_from_eight_clients(tmp_path):
    from napari_histoseg import testing

    ckpt = testing.save_random_checkpoint(tmp_path / "random.safetensors", tile_size=128)
    (tmp_path / "slides").mkdir()
    config = ServerConfig(device="cpu", token=TOKEN, models=[ckpt], bundled=False, slides=tmp_path / "slides",
                          max_body_mb=16)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    with ServerThread(create_app(config)) as url:
        got = mixed_load(url, TOKEN, "random", image, clients=8, per_client=10, big_mb=64)
    assert got["requests"] == 80 and got["wrong"] == [], got
    assert got["good"] == got["good_right"] > 0 and got["bad"] == got["bad_right"] > 0
    assert got["unauthenticated"] == got["unauthenticated_right"] > 0
    assert got["rss_growth_mb"] < 200, got       # 8 x 64 MB refused unread, not buffered
