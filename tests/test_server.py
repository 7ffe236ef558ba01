"""``histoseg serve`` on a free loopback port: same numbers as local, token, body limit,
slide paths, a lost server, fine-tune jobs."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from skimage.io import imsave

from napari_histoseg.backends.local import LocalBackend
from napari_histoseg.backends.remote import BackendConnectionError, BackendError, RemoteBackend
from napari_histoseg.core.runs import drive
from napari_histoseg.server.app import ServerConfig, create_app
from napari_histoseg.server.security import SecurityError, check_bind, read_token
from napari_histoseg.server.thread import ServerThread

pytestmark = pytest.mark.filterwarnings("ignore")
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from napari_histoseg.models import save_checkpoint
    from napari_histoseg.models.segmenter import Segmenter

    model = Segmenter.random("unet-mobilenet_v2", seed=0, device="cpu")
    model.meta.tile_size = 256
    return save_checkpoint(model.module, tmp_path_factory.mktemp("ckpt") / "random.safetensors", model.meta)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    (root / "slides").mkdir()
    rgb = np.random.default_rng(1).integers(0, 255, (200, 260, 3), dtype=np.uint8)
    imsave(root / "slides" / "a.png", rgb, check_contrast=False)
    imsave(root / "secret.png", rgb, check_contrast=False)
    (root / "slides" / "link.png").symlink_to(root / "secret.png")
    return root / "slides", rgb


@pytest.fixture(scope="module")
def server(ckpt, slides):
    config = ServerConfig(device="cpu", token=TOKEN, slides=slides[0], models=[ckpt], bundled=False, max_body_mb=2)
    with ServerThread(create_app(config)) as url:
        yield url


@pytest.fixture
def image(he_image):
    return np.ascontiguousarray(he_image[100:420, 200:584])  # 320 x 384


def test_server_gives_the_local_probabilities(server, ckpt, image):
    local = drive(LocalBackend().segment(image, str(ckpt), device="cpu", tile=256, overlap=32))
    remote = RemoteBackend(server, token=TOKEN)
    got = drive(remote.segment(image, str(ckpt), tile=256, overlap=32))
    assert got.probability.shape == local.probability.shape == image.shape[:2]
    np.testing.assert_allclose(got.probability, local.probability, atol=1e-3)  # float16 on the wire
    sure = np.abs(local.probability - 0.5) > 2e-3  # a random model: many pixels sit at 0.5
    assert sure.mean() > 0.3 and (got.mask[sure] == local.mask[sure]).all()
    one_request = remote.segment_region(image, str(ckpt), tile=256, overlap=32)
    np.testing.assert_allclose(one_request.probability, local.probability, atol=1e-3)
    assert "random unet-mobilenet_v2" in remote.describe(str(ckpt)) and server in remote.describe(str(ckpt))
    assert remote.list_models() == ["random"]  # uploaded once: the server knew the file by its hash

    from napari_histoseg import load_model, segment

    model = load_model(str(ckpt), backend=server, token=TOKEN)
    np.testing.assert_allclose(segment(image, model, tile=256, overlap=32), local.probability, atol=1e-3)


def test_server_explains_like_local(server, ckpt, image):
    region = (40, 60, 200, 240)
    local = drive(LocalBackend().explain(image, str(ckpt), "entropy", device="cpu", tile=256, region=region))
    got = drive(RemoteBackend(server, token=TOKEN).explain(image, str(ckpt), "entropy", tile=256, region=region))
    assert got.shape == local.shape == region[2:]
    np.testing.assert_allclose(got, local, atol=2e-3)
    target = np.zeros(region[2:], bool)
    target[50:120, 60:200] = True  # "a shape I drew": travels with the image as NPZ
    local = drive(LocalBackend().explain(image, str(ckpt), "gradcam", device="cpu", tile=256, region=region,
                                         target=target))
    got = drive(RemoteBackend(server, token=TOKEN).explain(image, str(ckpt), "gradcam", tile=256, region=region,
                                                           target=target))
    assert np.abs(local).max() > 0
    np.testing.assert_allclose(got, local, atol=2e-3)


def test_token_missing_or_wrong_is_401(server, image):
    assert httpx.get(f"{server}/models").status_code == 401
    assert httpx.get(f"{server}/models", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert httpx.get(f"{server}/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.get(f"{server}/docs").status_code == 200  # the OpenAPI page is public
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert {"/models", "/segment", "/segment-slide", "/explain", "/jobs", "/jobs/{job_id}/checkpoint"} <= set(paths)
    with pytest.raises(BackendError, match="401"):
        drive(RemoteBackend(server, token="wrong-token-0123456789").segment(image))


def test_oversized_body_is_413(server):
    h = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream",
         "X-Shape": "1024,1024,3", "X-Dtype": "uint8"}
    big = bytes(3 * 2**20)
    assert httpx.post(f"{server}/segment", content=big, headers=h).status_code == 413

    def chunks():  # no Content-Length: found while streaming
        for _ in range(3):
            yield bytes(2**20)

    assert httpx.post(f"{server}/segment", content=chunks(), headers=h).status_code == 413
    with pytest.raises(BackendError, match="413"):
        RemoteBackend(server, token=TOKEN).segment_region(np.zeros((1024, 1024, 3), np.uint8))


def test_slide_paths_stay_under_slides(server, slides):
    remote = RemoteBackend(server, token=TOKEN)
    pred = remote.segment_slide("a.png", "random", region=(10, 20, 100, 150), tile=128)
    assert pred.probability.shape == (100, 150) and pred.region == (10, 20, 100, 150)
    for path, code in [("../secret.png", 403), ("link.png", 403), (str(slides[0].parent / "secret.png"), 403),
                       ("sub/../../secret.png", 403), ("missing.png", 404)]:
        with pytest.raises(BackendError, match=f"HTTP {code}"):
            remote.segment_slide(path, "random")


def test_cli_segment_with_a_backend(server, ckpt, slides, tmp_path):
    from skimage.io import imread

    from napari_histoseg.cli import main

    (tmp_path / "token").write_text(TOKEN)
    out = tmp_path / "mask.png"
    assert main(["segment", str(slides[0] / "a.png"), "-o", str(out), "--model", str(ckpt), "--tile", "128",
                 "--overlap", "32", "--backend", server, "--token-file", str(tmp_path / "token")]) == 0
    assert imread(out).shape == slides[1].shape[:2]
    (tmp_path / "bad").write_text("wrong-token-0123456789")
    assert main(["segment", str(slides[0] / "a.png"), "-o", str(out), "--backend", server,
                 "--token-file", str(tmp_path / "bad")]) == 2  # a message, not a traceback


def test_a_restarted_server_gets_the_checkpoint_again(ckpt, image):
    from napari_histoseg.server.thread import free_port

    port, remote = free_port(), None
    for _ in range(2):  # two servers on the same port, the second knows nothing of the first's uploads
        app = create_app(ServerConfig(device="cpu", bundled=False))
        with ServerThread(app, port=port) as url:
            remote = remote or RemoteBackend(url)
            pred = drive(remote.segment(image[:128, :128], str(ckpt), tile=128))
            assert pred.probability.shape == (128, 128) and len(app.state.store.entries) == 1


def test_a_busy_server_says_when_to_retry_and_the_client_waits(ckpt, image):
    app = create_app(ServerConfig(device="cpu", models=[ckpt], bundled=False, max_busy=1))
    with ServerThread(app) as url:
        remote = RemoteBackend(url)
        ref = remote.server_ref(str(ckpt))
        app.state.busy = 1           # another request holds the only slot
        r = httpx.post(f"{url}/segment", params={"model": ref},
                       content=image[:64, :64].tobytes(), headers={"X-Shape": "64,64,3", "X-Dtype": "uint8"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["detail"]
        remote.busy_retries = 0
        with pytest.raises(BackendError, match="is busy"):
            drive(remote.segment(image[:128, :128], str(ckpt), tile=128))
        remote.busy_retries = 30
        threading.Timer(1.5, lambda: setattr(app.state, "busy", 0)).start()   # the other request ends
        pred = drive(remote.segment(image[:128, :128], str(ckpt), tile=128))  # waited, then answered
        assert pred.probability.shape == (128, 128) and app.state.busy == 0


def test_uploads_must_be_safetensors(server, tmp_path):
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)  # a pickle
    r = httpx.post(f"{server}/models", content=buf.getvalue(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and "safetensors" in r.json()["detail"]


def test_bind_and_token_rules(tmp_path):
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(SecurityError, match="token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", TOKEN)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(SecurityError, match="at least"):
        read_token(tmp_path / "short")
    (tmp_path / "tok").write_text(TOKEN + "\n")
    assert read_token(tmp_path / "tok") == TOKEN
    from napari_histoseg.cli import main

    with pytest.raises(SystemExit, match="refusing to listen on 0.0.0.0 without a token"):
        main(["serve", "--host", "0.0.0.0"])  # refused before anything is loaded or bound


def test_a_server_stopped_mid_request_raises_a_clear_error(ckpt, tmp_path):
    """A real `histoseg serve` process, killed while it computes a large region."""
    import os
    import signal
    import subprocess
    import sys

    from napari_histoseg.server.thread import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "napari_histoseg.cli", "serve", "--port", str(port), "--device",
                             "cpu", "--model", str(ckpt)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() - t0 < 90, proc.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        remote = RemoteBackend(url, timeout=60)
        big = np.random.default_rng(0).integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
        errors = []
        t = threading.Thread(target=lambda: errors.append(
            _catch(lambda: remote.segment_region(big, "random", tile=128))))
        t.start()
        time.sleep(1.5)  # the request is in the server's hands now
        assert t.is_alive(), errors
        proc.send_signal(signal.SIGKILL)
        t.join(30)
    finally:
        proc.kill()
        proc.wait()
    assert errors and isinstance(errors[0], BackendConnectionError), errors
    assert url in str(errors[0]) and "try again" in str(errors[0])
    with pytest.raises(BackendConnectionError, match=url):
        remote.list_models()


def _catch(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    return None


def _dataset(root, n=6, size=64):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tiles = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[8 + i:40 + i, 10:50] = 1
        img = np.where(mask[..., None] == 1, [90, 40, 120], [230, 200, 220]).astype(np.uint8)
        imsave(root / "images" / f"t{i}.png", img, check_contrast=False)
        imsave(root / "masks" / f"t{i}.png", mask, check_contrast=False)
        tiles.append({"id": f"t{i}", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png",
                      "split": "test" if i >= 4 else "train", "source": "synthetic",
                      "x": 0, "y": 0, "width": size, "height": size})
    (root / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1,
                                                   "classes": {"0": "not tumour", "1": "tumour"},
                                                   "ignore_index": 255, "tiles": tiles}))
    return root


def test_finetune_job_is_followed_fetched_and_cancelled(server, tmp_path):
    from napari_histoseg.models import read_meta

    data = _dataset(tmp_path / "ds")
    remote = RemoteBackend(server, token=TOKEN)
    steps = []
    out = tmp_path / "ft.safetensors"
    summary = remote.fine_tune(data, out, "random", epochs=1, patch_size=32, batch_size=2, steps_per_epoch=2,
                               name="served", progress=steps.append, poll=0.2)
    assert out.is_file() and read_meta(out).model_version == "0+ft"
    assert summary["stop_reason"] and summary["server_model"] in remote.list_models()
    assert any(s.get("kind") == "epoch" for s in steps)

    job = remote.start_job(data, "random", epochs=500, patch_size=32, batch_size=2, steps_per_epoch=50)
    assert remote.job(job["id"])["state"] == "running"
    with pytest.raises(BackendError, match="409"):  # one job at a time
        remote.start_job(data, "random")
    t0 = time.monotonic()
    while remote.job(job["id"])["step"] is None and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    assert remote.job(job["id"])["step"]["kind"] == "step"  # progress can be followed
    assert remote.cancel_job(job["id"])["state"] in ("cancelling", "cancelled")
    while remote.job(job["id"])["state"] == "cancelling" and time.monotonic() - t0 < 60:
        time.sleep(0.1)
    final = remote.job(job["id"])
    assert final["state"] == "cancelled", final
    assert final["epochs"] == [] or len(final["epochs"]) < 500
    with pytest.raises(BackendError, match="404"):
        remote.job("nosuchjob")


def test_batcher_stacks_concurrent_requests_and_never_delays_a_lone_one():
    from napari_histoseg.server.batching import Batcher

    sizes = []

    def fn(batch):
        sizes.append(len(batch))
        time.sleep(0.05)
        return batch[:, None, :, :, 0].astype(np.float32)  # (N, 1, h, w): echo of the red channel

    b = Batcher(fn, max_tiles=16, wait_ms=200)
    t0 = time.perf_counter()
    with b.request():
        out = b(np.full((1, 32, 32, 3), 7, np.uint8))
    assert time.perf_counter() - t0 < 0.15 and out[0, 0, 0, 0] == 7  # alone: no 200 ms wait

    results, barrier = {}, threading.Barrier(4)

    def client(i):
        with b.request():
            barrier.wait()
            results[i] = b(np.full((2, 32, 32, 3), i, np.uint8))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all((results[i] == i).all() and results[i].shape == (2, 1, 32, 32) for i in range(4))
    assert max(sizes[1:]) > 2 and b.passes < 5  # stacked into fewer, larger passes
    off = Batcher(fn, enabled=False)
    for _i in range(3):
        off(np.zeros((1, 32, 32, 3), np.uint8))
    assert off.stats()["mean_batch"] == 1.0


@pytest.fixture(scope="module")
def task_server(ckpt):
    """A server holding the bundled nucleus model and classifier beside a tumour model."""
    from napari_histoseg.models.bundled import BUNDLED_CHECKPOINTS

    paths = [BUNDLED_CHECKPOINTS["instances"], BUNDLED_CHECKPOINTS["classification"]]
    if not all(p.is_file() for p in paths):
        pytest.skip("this install lacks the bundled nucleus model or classifier")
    config = ServerConfig(device="cpu", token=TOKEN, models=[ckpt, *paths], bundled=False, max_body_mb=8)
    with ServerThread(create_app(config)) as url:
        yield url, paths


def test_server_finds_the_same_nuclei_as_local(task_server, image):
    url, (nuclei, _) = task_server
    remote = RemoteBackend(url, token=TOKEN)
    assert remote.list_models(task="instances") == ["nuclei"] and "random" in remote.list_models("segmentation")
    steps = []
    labels, table = drive(remote.detect_nuclei(image, str(nuclei), mpp=0.25), progress=lambda *s: steps.append(s))
    local_labels, local_table = drive(LocalBackend().infer("instances", image, str(nuclei), mpp=0.25))
    assert steps[-1] == (1, 1) and labels.shape == image.shape[:2] and labels.dtype == np.uint32
    assert labels.max() > 5 and np.array_equal(labels, local_labels)  # every nucleus, the same outline
    assert list(table.columns) == list(local_table.columns) and len(table) == labels.max()
    np.testing.assert_allclose(table["area_um2"], local_table["area_um2"])
    assert "on cpu" in remote.describe(str(nuclei), task="instances")


def test_server_classifies_a_region_like_local(task_server, he_image):
    url, (_, classifier) = task_server
    region = np.zeros(he_image.shape[:2], bool)
    region[100:700, 150:800] = True     # "the shape I drew"
    remote = RemoteBackend(url, token=TOKEN)
    got = drive(remote.classify(he_image, str(classifier), region=region, mpp=0.5))
    local = drive(LocalBackend().classify(he_image, str(classifier), region=region, mpp=0.5))
    assert got.label == local.label and got.n_tiles == local.n_tiles > 0
    np.testing.assert_allclose(got.probabilities, local.probabilities, atol=1e-5)
    assert got.probabilities.sum() == pytest.approx(1.0, abs=1e-5) and got.boxes == local.boxes


def test_infer_refuses_a_wrong_task_model_or_option(task_server, image):
    url, (nuclei, _) = task_server
    remote = RemoteBackend(url, token=TOKEN)
    with pytest.raises(BackendError, match="HTTP 404.*no task 'nope'"):
        remote.request("POST", "/infer/nope", content=b"")
    with pytest.raises(BackendError, match="HTTP 400.*'nuclei' is a model for instances, not for segmentation"):
        remote.segment_region(image, "nuclei")
    with pytest.raises(BackendError, match="HTTP 400.*'random' is a model for segmentation, not for classification"):
        drive(remote.classify(image, "random"))
    with pytest.raises(ValueError, match="nuclei .instances. does not take colour"):
        drive(remote.detect_nuclei(image, str(nuclei), colour=True))  # refused before anything is sent
    h = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-npz"}
    from napari_histoseg.backends import wire

    body = wire.pack({"image": image}, {"options": {"tile": 640, "colour": 1}})
    r = httpx.post(f"{url}/infer/instances", params={"model": "nuclei"}, content=body, headers=h)
    assert r.status_code == 400 and "does not take colour" in r.json()["detail"]


def test_a_classifier_is_fine_tuned_on_the_server(task_server, tmp_path):
    """The Fine-tune widget's call for a classification folder: the job trains the server's
    classifier (the task is the folder's), and the new classifier comes back and is served."""
    from napari_histoseg.models import read_meta
    from napari_histoseg.testing import classification_dataset

    url, (_, classifier) = task_server
    data = classification_dataset(tmp_path / "cls", patients=5, per=2, size=160)
    remote = RemoteBackend(url, token=TOKEN)
    out = tmp_path / "cls-ft.safetensors"
    summary = remote.fine_tune(data, out, str(classifier), epochs=1, patch_size=64, batch_size=4, steps_per_epoch=1,
                               poll=0.2)
    meta = read_meta(out)
    assert meta.task == "classification" and meta.model_version.endswith("+ft")
    assert summary["server_model"] in remote.list_models(task="classification")
    with pytest.raises(BackendError, match="HTTP 400.*'random' is a model for segmentation, not for classification"):
        remote.start_job(data, "random")  # a tumour model cannot train on a classification folder


def test_server_explains_a_classification_like_local(task_server, he_image):
    url, (_, classifier) = task_server
    crop = np.ascontiguousarray(he_image[100:500, 150:600])
    region = np.zeros(crop.shape[:2], bool)
    region[40:360, 50:400] = True
    remote, steps = RemoteBackend(url, token=TOKEN), []
    remote.poll = 0.01
    got = drive(remote.explain(crop, str(classifier), task="classification", region=region, mpp=0.5),
                progress=lambda *s: steps.append(s))
    local = drive(LocalBackend().explain(crop, str(classifier), task="classification", region=region, mpp=0.5))
    assert got.shape == crop.shape[:2] and got.max() > 0 and not got[~region].any()
    np.testing.assert_allclose(got, local, atol=2e-3)  # float16 on the wire
    assert steps[0] == (0, 1) and steps[-1] == (1, 1)
    assert any(t > 1 for _, t in steps[1:-1])          # the server's own tiles, not a bar stuck at 0/1
    with pytest.raises(ValueError, match="nuclei .instances. has no explanations"):
        drive(LocalBackend().explain(crop, task="instances"))


def test_remote_classify_tells_a_refused_region_from_an_error(task_server, he_image):
    """Over a server, a region the classifier refuses (no tissue) is refused like locally, so
    the Classify widget reports that region and goes on with the others."""
    from napari_histoseg.classifier.infer import ClassifierInputError
    from napari_histoseg.classifier.regions import iter_classify_regions

    url, (_, classifier) = task_server
    remote = RemoteBackend(url, token=TOKEN)
    glass = np.full((400, 400, 3), 243, np.uint8)
    with pytest.raises(ClassifierInputError, match="tissue"):
        drive(remote.classify(glass, str(classifier), mpp=0.5))
    image = np.concatenate([glass, np.ascontiguousarray(he_image[:400, :400])], axis=1)
    items = [("glass", (0, 0, 400, 400), None), ("tumour", (0, 400, 400, 400), None)]
    results, _ = drive(iter_classify_regions(image, items, lambda crop, mask, name: remote.classify(
        crop, str(classifier), mpp=0.5)))
    assert isinstance(results[0][3], str) and "tissue" in results[0][3]     # refused, with the reason
    assert results[1][3].label in ("benign", "malignant") or results[1][3].n_tiles > 0
    with pytest.raises(BackendError, match="HTTP 400"):                    # an error stays an error
        drive(remote.classify(glass, str(classifier), mpp="x"))


def test_remote_nuclei_report_the_servers_progress(task_server, he_image):
    url, (nuclei, _) = task_server
    remote = RemoteBackend(url, token=TOKEN)
    remote.poll = 0.01
    steps = []
    crop = np.ascontiguousarray(he_image[:600])     # more than one of the nuclei model's tiles
    labels, _ = drive(remote.detect_nuclei(crop, str(nuclei), mpp=0.25), progress=lambda *s: steps.append(s))
    assert labels.max() > 5 and steps[0] == (0, 1) and steps[-1] == (1, 1)
    inner = steps[1:-1]
    assert inner and all(0 <= d <= t and t > 1 for d, t in inner)          # the server's own tiles, in between
    assert [d for d, _ in inner] == sorted(d for d, _ in inner)


def test_a_restarted_server_cleans_up_and_still_knows_its_finished_jobs(tmp_path):
    """Unpacked uploads, uploaded checkpoints and jobs that were running when the server
    stopped are removed; a finished job answers again (its checkpoint can be fetched); nothing
    else in --workdir is touched. Job states are JSON even when training reported NaN."""
    from napari_histoseg.server.jobs import Job

    own = tmp_path / "histoseg-serve"
    for leftover in ("incoming/dataset-abc/images", "uploads", "jobs/aaaaaaaaaaaa", "jobs/bbbbbbbbbbbb"):
        (own / leftover).mkdir(parents=True)
    (own / "uploads" / "0123.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "dataset-mine").mkdir()            # the user's own folder beside it
    done = Job("bbbbbbbbbbbb", "random", tmp_path / "gone", own / "jobs/bbbbbbbbbbbb/ft.safetensors",
               {"epochs": 1, "name": "ft"}, state="done", step={"loss": float("nan")}, ended=time.time())
    done.out.write_bytes(b"weights")
    (done.out.parent / "job.json").write_text(json.dumps({**done.public(), "created": done.created,
                                                          "ended": done.ended, "out": done.out.name}))
    assert json.loads(json.dumps(done.public(), allow_nan=False))["step"] == {"loss": None}
    app = create_app(ServerConfig(device="cpu", bundled=False, workdir=tmp_path))
    assert not (own / "incoming").exists() and not (own / "uploads").exists()
    assert not (own / "jobs/aaaaaaaaaaaa").exists() and (tmp_path / "dataset-mine").is_dir()
    with ServerThread(app) as url:
        state = httpx.get(f"{url}/jobs/bbbbbbbbbbbb").json()
        assert state["state"] == "done" and state["checkpoint_ready"] and state["new_model"] is None
        assert httpx.get(f"{url}/jobs/bbbbbbbbbbbb/checkpoint").content == b"weights"
        assert httpx.get(f"{url}/jobs/aaaaaaaaaaaa").status_code == 404
