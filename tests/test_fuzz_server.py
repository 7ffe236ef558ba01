"""Hostile and broken requests to ``histoseg serve``: every one a 4xx with a one-line reason
that names no server path, never a 500, nothing allocated without bound, nothing read outside
the server's folders, no job started by a refused request, nothing left unpacked.

The seeds are the cases a probe of the server found mishandled; a seeded random round then
throws mixed bodies, headers and parameters at every route."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib

import httpx
import numpy as np
import psutil
import pytest

from napari_histoseg.backends import wire
from napari_histoseg.server.app import ServerConfig, create_app
from napari_histoseg.server.thread import ServerThread

pytestmark = pytest.mark.filterwarnings("ignore")
TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MB = 2**20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from napari_histoseg import testing

    root = tmp_path_factory.mktemp("fuzz")
    ckpt = testing.save_random_checkpoint(root / "random.safetensors", tile_size=256)
    slides = root / "slides"
    slides.mkdir()
    (slides / "loop-a").symlink_to(slides / "loop-b")
    (slides / "loop-b").symlink_to(slides / "loop-a")
    (root / "work").mkdir()
    config = ServerConfig(device="cpu", token=TOKEN, slides=slides, models=[ckpt], bundled=False, max_body_mb=32,
                          max_region_px=1024 * 1024, max_models=1, workdir=root / "work")
    app = create_app(config)
    with ServerThread(app) as url:
        yield url, app, root
    while _client:
        _client.pop().close()


_client = []


def http() -> httpx.Client:
    """One client for the module (a new one per request costs more than most requests here)."""
    if not _client:
        _client.append(httpx.Client(timeout=60))
    return _client[0]


def post(url, path, body=b"", headers=None, params=None):
    params = {"model": "random"} if params is None else params
    return http().post(url + path, content=body, headers={**AUTH, **(headers or {})}, params=params)


def refused(r, *codes, root=None):
    """A 4xx (one of ``codes`` when given) with a one-line JSON reason naming no server path."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if codes:
        assert r.status_code in codes, (r.status_code, r.text[:300])
    detail = r.json()["detail"]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    if isinstance(detail, str):
        assert "\n" not in text and "Traceback" not in text
    if root is not None:
        assert str(root) not in text and "/tmp/" not in text, text
    return text


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def npy_header(shape, descr="|u1") -> bytes:
    from numpy.lib import format as npf

    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def deflated_npz(name: str, header: bytes, zeros: int) -> bytes:
    """An NPZ whose member ``name`` is ``header`` and then ``zeros`` zero bytes, deflated
    (256 MB of zeros fit in about 250 KB); written in pieces, never held whole."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as m:
            m.write(header)
            chunk = bytes(8 * MB)
            for _ in range(zeros // len(chunk)):
                m.write(chunk)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB with a token of pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096))) + \
        chunk(b"IEND", b"")


def test_unauthenticated_bodies_are_refused_before_they_are_read(served):
    url, _, _ = served
    chunk = bytes(MB)

    def body():
        for _ in range(250):
            yield chunk

    before = rss_mb()
    for _ in range(4):   # 4 x 250 MB announced, never read
        r = httpx.post(f"{url}/segment", content=body(), timeout=60,
                       headers={"Content-Length": str(250 * MB), "Content-Type": wire.RAW})
        assert r.status_code == 401 and "token" in r.json()["detail"]
    r = httpx.post(f"{url}/jobs", content=body(), timeout=60, headers={"Authorization": "Bearer wrong-0123456789abc"})
    assert r.status_code == 401   # streamed without Content-Length: refused on the headers too
    assert rss_mb() - before < 50
    # an authenticated body over the limit is refused while it streams
    r = httpx.post(f"{url}/segment", content=body(), headers={**AUTH, "Content-Type": wire.RAW}, timeout=60)
    assert r.status_code == 413 and "--max-body-mb" in r.json()["detail"]
    assert rss_mb() - before < 50
    assert httpx.get(f"{url}/health").status_code == 200   # the public routes stay public


def test_bodies_that_would_inflate_are_refused_before_they_do(served):
    url, _, root = served
    before = rss_mb()
    honest = deflated_npz("image.npy", npy_header((30000, 50000)), 16 * MB)   # declares 1.5 GB
    text = refused(post(url, "/infer/segmentation", honest, {"Content-Type": wire.NPZ}), 413, root=root)
    assert "megapixels" in text
    liar = deflated_npz("image.npy", npy_header((64, 64, 3)), 256 * MB)   # declares 12 KB, inflates to 256 MB
    assert len(liar) < MB
    refused(post(url, "/infer/segmentation", liar, {"Content-Type": wire.NPZ}), 400, root=root)
    refused(post(url, "/segment", npy_header((10**12,), "<f8") + bytes(1000), {"Content-Type": wire.NPY}), 413)
    refused(post(url, "/segment", npy_header((100, 100), "|O") + bytes(1000), {"Content-Type": wire.NPY}), 400)
    for side in (20000, 9000):   # both declared by a small PNG; the server's limit is 1024 x 1024
        text = refused(post(url, "/segment", png_header_only(side, side), {"Content-Type": wire.PNG}), 413)
        assert "megapixels" in text
    raw = {"Content-Type": wire.RAW, "X-Dtype": "uint8"}
    for shape in ("100000,100000,3", "99999999999999999999999,1"):
        refused(post(url, "/segment", bytes(10), {**raw, "X-Shape": shape}), 413)
    for shape in ("1,2,3,4,5", "-1,3", "a,b", ""):
        refused(post(url, "/segment", bytes(6), {**raw, "X-Shape": shape}), 400)
    refused(post(url, "/segment", bytes(6), {**raw, "X-Shape": "1,2,3", "X-Dtype": "object"}), 400)
    deep = wire.npz(image=np.zeros((64, 64, 3), np.uint8), __info__=np.frombuffer(b"[" * 100000, np.uint8))
    refused(post(url, "/infer/segmentation", deep, {"Content-Type": wire.NPZ}), 400)
    assert rss_mb() - before < 150


@pytest.mark.parametrize("params", [{"tile": -64}, {"tile": 7}, {"tile": "nan"}, {"tile": 10**9}, {"overlap": -1},
                                    {"overlap": 10**9}, {"tile": 256, "overlap": 200}, {"region": "-5,0,10,10"},
                                    {"region": "0,0,0,10"}, {"region": "1,2,3"}, {"region": "a,b,c,d"},
                                    {"model": "nope"}, {"model": "x" * 5000}])
def test_bad_segment_parameters_are_4xx(served, params):
    url, _, root = served
    body, headers = wire.encode(np.zeros((64, 64, 3), np.uint8))
    refused(post(url, "/segment", body, headers, params), root=root)


@pytest.mark.parametrize("params", [{"lr": "nan"}, {"lr": -1}, {"lr": "inf"}, {"time_budget": "nan"},
                                    {"time_budget": -5}, {"time_budget": 0}, {"steps_per_epoch": 0},
                                    {"epochs": 0}, {"epochs": -3}, {"patch_size": 2048, "batch_size": 256},
                                    {"patch_size": 33}, {"batch_size": 0}, {"name": "x" * 500}])
def test_bad_job_settings_are_refused_and_start_nothing(served, params, tmp_path):
    url, app, root = served
    r = post(url, "/jobs", _dataset_zip(tmp_path), {"Content-Type": "application/zip"}, params)
    refused(r, 422, root=root)
    assert app.state.jobs.jobs == {}          # nothing invisible was started
    assert not list((app.state.workdir / "incoming").glob("*")) if (app.state.workdir / "incoming").exists() else True


def _dataset_zip(tmp_path, tiles=None, extra=None) -> bytes:
    from napari_histoseg.testing import tumour_dataset

    folder = tumour_dataset(tmp_path / "ds", n=2, size=64) if tiles is None else None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if folder is not None:
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(folder).as_posix())
        else:
            zf.writestr("dataset.json", json.dumps({"format": "histoseg-dataset", "version": 1, "tiles": tiles}))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("image", ["/etc/passwd", "../../x.png", "images/../../../etc/hostname", "/dev/zero"])
def test_a_dataset_naming_files_outside_its_upload_is_refused(served, tmp_path, image):
    url, app, root = served
    tiles = [{"id": "t0", "image": image, "mask": "masks/t0.png", "split": "train"}]
    r = post(url, "/jobs", _dataset_zip(tmp_path, tiles), {"Content-Type": "application/zip"},
             {"model": "random", "epochs": 1, "steps_per_epoch": 1})
    text = refused(r, 400, root=root)
    assert "outside" in text or "absolute" in text
    assert "root:" not in text and "bytes" not in text     # nothing about the file it named
    assert app.state.jobs.jobs == {}
    assert not list((app.state.workdir / "incoming").glob("*"))   # nothing left unpacked


def test_refused_archives_leave_nothing_unpacked(served, tmp_path):
    url, app, root = served
    cases = [b"not a zip", _dataset_zip(tmp_path, [{"id": "t0", "image": "images/missing.png", "mask": "m.png"}]),
             _dataset_zip(tmp_path, [], {"images/big.bin": bytes(3 * MB)}),    # unpacked, then refused (no tiles)
             _dataset_zip(tmp_path, [{"id": 1}], {"../evil.txt": b"x"})]
    for body in cases:
        r = post(url, "/jobs", body, {"Content-Type": "application/zip"}, {"model": "random"})
        refused(r, root=root)
    assert not list((app.state.workdir / "incoming").glob("*"))
    assert app.state.jobs.jobs == {}


def test_unusable_checkpoints_are_not_served(served, tmp_path):
    import torch
    from safetensors.torch import save_file

    from napari_histoseg import testing

    url, app, root = served
    model = testing.random_segmenter("unet-mobilenet_v2", seed=1, device="cpu")
    for i, (key, value) in enumerate([("tile_size", 0), ("tile_size", 10**9), ("std", [0.0, 0.0, 0.0]),
                                      ("std", [float("nan")] * 3), ("mpp", -0.5), (None, None)]):
        meta = model.meta.to_json()
        tensors = {k: (v.half() if v.is_floating_point() else v.clone()).contiguous()   # float16: half the bytes
                   for k, v in model.module.state_dict().items()}
        if key is None:   # NaN weights
            first = next(k for k, v in tensors.items() if v.is_floating_point())
            tensors[first][...] = float("nan")
        else:
            meta[key] = value
        path = tmp_path / f"bad{i}.safetensors"
        save_file(tensors, str(path), metadata={"histoseg": json.dumps(meta)})
        r = post(url, "/models", path.read_bytes(), {"Content-Type": wire.RAW})
        refused(r, 400, root=root)
    assert not [p for p in (app.state.workdir / "uploads").glob("*")]   # refused uploads removed
    torch.manual_seed(0)


def test_uploads_are_held_least_recently_used_first(served, tmp_path):
    from napari_histoseg import testing

    url, app, _ = served
    refs = []
    for seed in range(2):   # the server holds 1 upload besides the model it started with
        model = testing.random_segmenter("unet-mobilenet_v2", seed=10 + seed, device="cpu")
        path = testing.save_random_checkpoint(tmp_path / f"m{seed}.safetensors", model, tile_size=256)
        r = post(url, "/models", path.read_bytes(), {"Content-Type": wire.RAW})
        assert r.status_code == 200, r.text
        refs.append(r.json()["ref"])
    served_refs = [m["ref"] for m in http().get(f"{url}/models", headers=AUTH).json()["models"]]
    assert "random" in served_refs and refs[0] not in served_refs and refs[1] in served_refs
    assert len(list((app.state.workdir / "uploads").glob("*.safetensors"))) == 1   # the unloaded one's file is gone
    r = post(url, "/segment", *wire.encode(np.zeros((64, 64, 3), np.uint8)), params={"model": refs[0]})
    assert r.status_code == 404 and "no model" in r.json()["detail"]


@pytest.mark.parametrize("path", ["loop-a", "loop-a/x.png", "x" * 5000, "a/" * 2000 + "b", "../secret.png",
                                  "/etc/passwd", "sub\x00.png", "", "C:/x.png", "nothere.png"])
def test_bad_slide_paths_are_4xx(served, path):
    url, _, root = served
    r = http().post(f"{url}/segment-slide", json={"path": path, "model": "random"}, headers=AUTH)
    refused(r, root=root)


@pytest.mark.parametrize("payload", [{"path": "a.png", "level": -1}, {"path": "a.png", "level": 10**6},
                                     {"path": "a.png", "region": [-1, 0, 5, 5]}, {"path": "a.png", "tile": 0},
                                     {"path": "a.png", "overlap": -1}, {"path": 5}, {"level": 0}, ["a.png"]])
def test_bad_slide_requests_are_4xx(served, payload):
    url, _, root = served
    refused(http().post(f"{url}/segment-slide", json=payload, headers=AUTH), root=root)


def test_job_routes_never_fail(served):
    url, _, _ = served
    for job_id in ("nosuch", "..%2F..%2Fetc", "x" * 3000, "%00"):
        for method in ("GET", "DELETE"):
            r = http().request(method, f"{url}/jobs/{job_id}", headers=AUTH)
            assert r.status_code == 404, (method, job_id, r.status_code)
        assert http().get(f"{url}/jobs/{job_id}/checkpoint", headers=AUTH).status_code == 404


def test_seeded_random_requests_are_never_a_500(served):
    """120 requests mixing routes, content types, shape and dtype headers, parameters and bodies
    (random bytes, truncated and valid arrays)."""
    url, app, root = served
    rng = np.random.default_rng(26)
    good = np.ascontiguousarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    bodies = [b"", rng.bytes(17), rng.bytes(4096), wire.png(good), wire.png(good)[:200], wire.npz(image=good),
              wire.npz(image=good)[:-50], wire.pack({"image": good}, {"options": {"tile": "x"}}),
              wire.pack({"image": good}, {"options": [1, 2]}), wire.pack({"region": good[..., 0] > 9}, {}),
              wire.encode(good)[0], npy_header((3,)) + b"abc", b"PK\x03\x04" + rng.bytes(100)]
    routes = ["/segment", "/predict", "/explain", "/infer/segmentation", "/infer/instances", "/infer/nope",
              "/explain/segmentation", "/explain/classification", "/models", "/jobs", "/segment-slide"]
    types = [wire.RAW, wire.PNG, wire.NPY, wire.NPZ, "application/zip", "application/json", "text/plain", ""]
    shapes = [None, "64,96,3", "1,64,96,3", "64,96", "0,0,3", "3", "-1", "1,1,1,1,1"]
    dtypes = [None, "uint8", "float16", "float32", "bool", "int64", "O"]
    params = [{}, {"model": "random"}, {"model": ""}, {"tile": 64}, {"tile": "1e9"}, {"overlap": "-3"},
              {"region": "0,0,32,32"}, {"region": "0,0,999,999"}, {"method": "nope"}, {"layer": "no.such.layer"},
              {"method": "entropy", "tile": 64, "overlap": 16}, {"target": "nope"}, {"lr": "1e400"},
              {"epochs": "1.5"}, {"task": "nope"}]
    codes = []
    for _ in range(120):
        headers = {"Content-Type": str(rng.choice(types))}
        for key, pool in (("X-Shape", shapes), ("X-Dtype", dtypes)):
            value = pool[rng.integers(len(pool))]
            if value is not None:
                headers[key] = value
        r = post(url, str(rng.choice(routes)), bodies[rng.integers(len(bodies))], headers,
                 params[rng.integers(len(params))])
        codes.append(r.status_code)
        assert r.status_code < 500, (r.status_code, r.text[:300])
        if r.status_code >= 400:
            refused(r, root=root)
    assert sum(400 <= c < 500 for c in codes) > 60 and app.state.jobs.jobs == {}


@pytest.mark.parametrize("route, params, options", [
    ("/explain", {"layer": "encoder"}, None), ("/explain", {"layer": "no.such"}, None),
    ("/explain", {"method": "nope"}, None), ("/explain", {"target": "nope"}, None),
    ("/explain/segmentation", {}, {"channel": 99}), ("/explain/segmentation", {}, {"samples": 10**9}),
    ("/explain/segmentation", {}, {"blur_sigma": "nan"}), ("/infer/segmentation", {}, {"tissue": 5}),
    ("/infer/segmentation", {}, {"preprocess": "nope"}), ("/infer/segmentation", {}, {"threshold": 2}),
    ("/infer/segmentation", {}, {"batch_size": -3}), ("/infer/segmentation", {}, {"mpp": 0}),
    ("/infer/segmentation", {}, {"region": [0, 0, 5000, 5]}), ("/infer/segmentation", {}, {"nope": 1})])
def test_bad_task_options_are_4xx(served, route, params, options):
    url, _, root = served
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    if options is None:
        body, headers = wire.encode(image)
    else:
        body, headers = wire.pack({"image": image}, {"method": "gradcam", "options": options}), {
            "Content-Type": wire.NPZ}
    refused(post(url, route, body, headers, {"model": "random", **params}), root=root)


def test_the_gate_caps_the_bodies_held_at_once():
    """Requests whose bodies together would pass the in-flight budget wait for none: the one
    over it gets 503 with Retry-After, and the budget is free again once they end."""
    import asyncio

    from napari_histoseg.server.security import Gate

    release = asyncio.Event()

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gate = Gate(app, token=None, limit=10 * MB, inflight=15 * MB)

    async def call(nbytes):
        sent, out = [False], []

        async def receive():
            if sent[0]:
                await asyncio.sleep(3600)
            sent[0] = True
            return {"type": "http.request", "body": bytes(nbytes), "more_body": False}

        async def send(message):
            out.append(message)

        scope = {"type": "http", "path": "/segment", "headers": [(b"content-length", str(nbytes).encode())]}
        await gate(scope, receive, send)
        return out[0]["status"], dict(out[0].get("headers") or [])

    async def scenario():
        first = asyncio.create_task(call(8 * MB))
        await asyncio.sleep(0.05)
        assert gate.held == 8 * MB
        status, headers = await call(8 * MB)          # 16 MB together: over the budget
        assert status == 503 and headers[b"retry-after"] == b"2"
        assert (await call(11 * MB))[0] == 413       # over the per-request limit, never read
        release.set()
        assert (await first)[0] == 200 and gate.held == 0
        assert (await call(8 * MB))[0] == 200

    asyncio.run(scenario())
