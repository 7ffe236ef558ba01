"""A mixed load on a running ``histoseg serve``: good, bad and unauthenticated large requests
from many clients at once, with the process's peak memory (tests and ``benchmarks/bench_serve.py``).

Each client sends ``per_client`` requests in a fixed rotation: good ones (``/segment`` of an
image whose answer is known, ``/models``), bad ones (a negative tile, an NPY header claiming
10^12 values, ``/jobs?lr=nan``, a PNG declaring 20000 x 20000 px, a path outside the slides)
and unauthenticated bodies of ``big_mb`` MB streamed with their ``Content-Length``. A good
answer counts as correct when it equals the reference (float16 on the wire); a bad one when it
is a 4xx; an unauthenticated one when it is a 401. Memory is sampled every 20 ms while it runs.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import numpy as np

from napari_histoseg.backends import wire

KINDS = ("good-segment", "bad-tile", "good-models", "bad-npy", "unauthenticated", "bad-lr", "good-segment",
         "bad-png", "bad-path", "good-segment")


def _png_declaring(side: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1024))) + chunk(b"IEND", b""))


def _npy_declaring(count: int) -> bytes:
    from numpy.lib import format as npf

    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (count,)})
    return buf.getvalue() + bytes(64)


class _Memory:
    """Peak resident memory of this process, sampled in a thread."""

    def __init__(self, every: float = 0.02):
        import psutil

        self.proc, self.every = psutil.Process(), every
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def mixed_load(url: str, token: str, model: str, image: np.ndarray, *, clients: int = 16, per_client: int = 10,
               big_mb: int = 250, timeout: float = 600.0) -> dict:
    """Run the load; returns counts per kind, what went wrong, latencies and memory (MB)."""
    import httpx

    auth = {"Authorization": f"Bearer {token}"}
    body, headers = wire.encode(image, "uint8")
    with httpx.Client(timeout=timeout) as c:   # the reference answer, before the load
        r = c.post(f"{url}/segment", content=body, headers={**auth, **headers}, params={"model": model})
        r.raise_for_status()
        reference = wire.decode(r.content, r.headers["content-type"], r.headers["x-shape"], r.headers["x-dtype"])
    npy, png = _npy_declaring(10**12), _png_declaring(20000)
    big = bytes(1 << 20)

    def unauthenticated_body():
        for _ in range(big_mb):
            yield big

    results, lock, barrier = [], threading.Lock(), threading.Barrier(clients)

    def one(c, kind):
        seg = {"model": model}
        if kind == "good-segment":
            r = c.post(f"{url}/segment", content=body, headers={**auth, **headers}, params=seg)
            if r.status_code != 200:
                return r.status_code, False
            got = wire.decode(r.content, r.headers["content-type"], r.headers["x-shape"], r.headers["x-dtype"])
            return 200, bool(got.shape == reference.shape and np.allclose(got, reference, atol=2e-3))
        if kind == "good-models":
            r = c.get(f"{url}/models", headers=auth)
            return r.status_code, r.status_code == 200 and model in [m["ref"] for m in r.json()["models"]]
        if kind == "unauthenticated":
            r = httpx.post(f"{url}/segment", content=unauthenticated_body(), timeout=timeout,
                           headers={"Content-Length": str(big_mb << 20), "Content-Type": wire.RAW})
            return r.status_code, r.status_code == 401
        if kind == "bad-tile":
            r = c.post(f"{url}/segment", content=body, headers={**auth, **headers}, params={**seg, "tile": -64})
        elif kind == "bad-npy":
            r = c.post(f"{url}/segment", content=npy, headers={**auth, "Content-Type": wire.NPY}, params=seg)
        elif kind == "bad-png":
            r = c.post(f"{url}/segment", content=png, headers={**auth, "Content-Type": wire.PNG}, params=seg)
        elif kind == "bad-lr":
            r = c.post(f"{url}/jobs", content=b"PK", headers={**auth, "Content-Type": "application/zip"},
                       params={"model": model, "lr": "nan"})
        else:   # bad-path
            r = c.post(f"{url}/segment-slide", json={"path": "../../etc/passwd", "model": model}, headers=auth)
        return r.status_code, 400 <= r.status_code < 500

    def client(i):
        with httpx.Client(timeout=timeout) as c:
            barrier.wait()
            for j in range(per_client):
                kind = KINDS[(i + j) % len(KINDS)]
                t0 = time.perf_counter()
                try:
                    code, ok = one(c, kind)
                except Exception as e:  # noqa: BLE001 - counted as wrong
                    code, ok = repr(e)[:200], False
                with lock:
                    results.append((kind, code, ok, time.perf_counter() - t0))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    with _Memory() as mem:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - t0
    good_lat = [s for k, _, _, s in results if k.startswith("good")]
    summary = {"clients": clients, "requests": len(results), "wall_s": round(wall, 1),
               "rss_start_mb": round(mem.start / 2**20), "rss_peak_mb": round(mem.peak / 2**20),
               "rss_growth_mb": round((mem.peak - mem.start) / 2**20),
               "good_p50_s": round(float(np.percentile(good_lat, 50)), 2) if good_lat else None,
               "good_p95_s": round(float(np.percentile(good_lat, 95)), 2) if good_lat else None,
               "wrong": [(k, c) for k, c, ok, _ in results if not ok]}
    for group in ("good", "bad", "unauthenticated"):
        mine = [ok for k, _, ok, _ in results if k.startswith(group)]
        summary[group] = len(mine)
        summary[f"{group}_right"] = sum(mine)
    return summary
