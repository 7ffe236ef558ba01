"""The remote backend: the same calls as :class:`~napari_histoseg.backends.local.LocalBackend`,
answered by ``histoseg serve`` on another machine (usually the one with the GPU).

>>> backend = RemoteBackend("http://gpu-box:8765", token=open("token").read().strip())  # doctest: +SKIP
>>> pred = drive(backend.segment(rgb))            # the tiled engine here, forward passes there

Tiling and blending run here through the same engine as locally (so progress, cancel and
lazy slide levels behave the same); only batches of tiles go to the server, which
stacks concurrent requests into one forward pass. A local checkpoint file named as the
model is uploaded once (the server knows it by its SHA-256 afterwards).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from napari_histoseg.backends import wire
from napari_histoseg.backends.remote_model import RemoteModel, prediction
from napari_histoseg.backends.wire import zip_dataset
from napari_histoseg.models.bundled import BUNDLED


class BackendError(ValueError):
    """The server answered, but refused or failed; the message says why (a ValueError, so
    the CLI prints it as a message rather than a traceback)."""


class BackendConnectionError(BackendError, ConnectionError):
    """The server could not be reached, or the connection broke during a request."""


class InputRefused(BackendError):
    """The server's task refused this input (HTTP 422 marked ``X-Refused: input``): the input
    cannot be used (a region that is not H&E), which is not an error of the server;
    ``detail`` is the task's own message."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


PROGRESS_HEADER = "X-Progress-Id"


class RemoteBackend:
    """Client of ``histoseg serve``.

    Parameters
    ----------
    url : str
        ``http://host:port`` of the server.
    token : str, optional
        The bearer token (the content of the server's ``--token-file``).
    timeout : float
        Seconds to wait for an answer to one request.
    """

    poll = 0.25   # seconds between progress reads while a one-request task runs
    busy_retries = 30   # a server answering "busy, retry after N s" is asked again, this many times

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0):
        import httpx

        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"backend URL must start with http:// or https://, not {url!r}")
        self.name = f"server {self.url}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._uploaded: dict[tuple, str] = {}
        self._info: dict[str, dict] = {}

    # -- transport -----------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs):
        import httpx

        for attempt in range(self.busy_retries + 1):
            try:
                r = self._http.request(method, path, **kwargs)
            except (httpx.TransportError, OSError) as e:
                raise BackendConnectionError(
                    f"lost the connection to the histoseg server at {self.url} ({type(e).__name__}: {e}); "
                    "check that it is running and reachable, then try again"
                ) from None
            wait = r.headers.get("retry-after") if r.status_code == 503 else None
            if wait is None or attempt == self.busy_retries:
                break
            time.sleep(min(max(float(wait) if wait.isdigit() else 1.0, 0.1), 5.0))  # busy: wait as told
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            what = {401: "refused the token", 403: "refused access", 404: "has no such thing",
                    413: "refused a request this large", 503: "is busy"}.get(r.status_code, "failed")
            message = f"the server at {self.url} {what} (HTTP {r.status_code}): {detail}"
            if r.status_code == 422 and r.headers.get("x-refused") == "input":
                raise InputRefused(message, str(detail))
            raise BackendError(message)
        return r

    def _array(self, r) -> np.ndarray:
        return wire.decode(r.content, r.headers.get("content-type"), r.headers.get("x-shape"),
                           r.headers.get("x-dtype"))

    def close(self):
        self._http.close()

    # -- models --------------------------------------------------------------------
    def models(self) -> list[dict]:
        """What the server serves: ref, name, version, arch, task, tile size, device."""
        infos = self.request("GET", "/models").json()["models"]
        self._info = {i["ref"]: i for i in infos}
        return infos

    def list_models(self, task: str | None = None) -> list[str]:
        """The server's model references (of ``task`` when given)."""
        return [i["ref"] for i in self.models() if task is None or i.get("task") == task]

    def server_ref(self, model_ref=BUNDLED, task: str = "segmentation") -> str:
        """The server's name for ``model_ref``: a local checkpoint file is uploaded (once)."""
        if model_ref in (None, "", BUNDLED):
            return wire.bundled_ref(task)
        path = Path(str(model_ref))
        if not path.is_file():
            return str(model_ref)   # a model the server already has, by its reference
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        if key not in self._uploaded:
            from napari_histoseg.core.hashing import file_sha256

            try:
                info = self.request("GET", f"/checkpoints/{file_sha256(path)}").json()
            except BackendError as e:
                if "HTTP 404" not in str(e) or isinstance(e, BackendConnectionError):
                    raise
                info = self.request("POST", "/models", content=path.read_bytes(),
                                    headers={"Content-Type": wire.RAW}).json()
            self._info[info["ref"]] = info
            self._uploaded[key] = info["ref"]
        return self._uploaded[key]

    def info(self, model_ref=BUNDLED, task: str = "segmentation") -> dict:
        ref = self.server_ref(model_ref, task)
        if ref not in self._info:
            self.models()
            if ref not in self._info:
                raise BackendError(f"the server at {self.url} has no model {ref!r}")
        return self._info[ref]

    def model(self, model_ref=BUNDLED, device=None, engine=None) -> RemoteModel:
        """The server's model for ``model_ref``, checked against its list (one small request),
        so a checkpoint uploaded before the server restarted is uploaded again."""
        ref = self.server_ref(model_ref)
        self.models()
        if ref not in self._info and model_ref not in (None, "", BUNDLED) and Path(str(model_ref)).is_file():
            self._uploaded = {k: v for k, v in self._uploaded.items() if v != ref}
            ref = self.server_ref(model_ref)
        return RemoteModel(self, ref)

    def describe(self, model_ref=BUNDLED, device=None, engine=None, *, task: str = "segmentation") -> str:
        i = self.info(model_ref, task)
        return f"{i['name']} v{i['version']} ({i['arch']}) on {i['device']} at {self.url}"

    # -- work ----------------------------------------------------------------------
    def segment(self, image, model_ref=BUNDLED, *, tile=None, device=None, engine=None, **options):
        """Generator like :meth:`LocalBackend.segment`: tiles here, forward passes there.
        ``device`` and ``engine`` are the server's to choose and are ignored."""
        from napari_histoseg.core.tiling import iter_predict

        model = self.model(model_ref)
        return (yield from iter_predict(image, model, tile=tile or model.meta.tile_size, **options))

    def infer(self, task: str, image, model_ref=BUNDLED, *, device=None, engine=None, **options):
        """Generator like :meth:`LocalBackend.infer`. Segmentation tiles here (as :meth:`segment`);
        the other tasks send the image and the options in one request (``POST /infer/{task}``)
        and yield the server's ``(done, total)`` while it works (read from ``GET /progress``);
        closing the generator stops the work on the server too. A region the classifier
        refuses raises :class:`~napari_histoseg.classifier.infer.ClassifierInputError`, as
        locally. ``device`` and ``engine`` are the server's to choose and are ignored."""
        from napari_histoseg.tasks import check_infer_options, get_task

        if task == "segmentation":
            return (yield from self.segment(image, model_ref, **options))
        t = get_task(task)
        check_infer_options(t, options)
        ref = self.server_ref(model_ref, task)
        arrays = {k: np.asarray(v) for k, v in options.items() if isinstance(v, np.ndarray)}
        rest = {k: v for k, v in options.items() if k not in arrays}
        body = wire.pack({"image": np.asarray(image), **arrays}, {"options": rest})
        try:
            r = yield from self._tracked(f"/infer/{task}", ref, body)
        except InputRefused as e:
            if task != "classification":
                raise
            from napari_histoseg.classifier.infer import ClassifierInputError

            raise ClassifierInputError(e.detail) from None
        result = t.result_from_parts(*wire.unpack(r.content, r.headers.get("content-type")))
        yield 1, 1
        return result

    def _tracked(self, path: str, ref: str, body: bytes):
        """POST an NPZ ``body`` to ``path`` in a thread and yield the server's ``(done, total)``
        for it meanwhile (``GET /progress``); closing the generator stops the server's work too
        (``DELETE /progress``). Returns the response; raises what the request raised."""
        import threading
        import uuid

        key, answer = uuid.uuid4().hex, {}

        def send():
            try:
                answer["r"] = self.request("POST", path, params={"model": ref}, content=body,
                                           headers={"Content-Type": wire.NPZ, PROGRESS_HEADER: key})
            except Exception as e:  # noqa: BLE001 - raised in the generator below
                answer["error"] = e

        sender = threading.Thread(target=send, name="histoseg-remote-request", daemon=True)
        sender.start()
        last = (0, 1)
        yield last
        try:
            while sender.is_alive():
                sender.join(self.poll)
                step = self._progress(key) if sender.is_alive() else None
                if step is not None and step != last:
                    last = step
                    yield step
        finally:
            if sender.is_alive():        # closed by the caller: stop the server's work too
                self._cancel(key)
        if "error" in answer:
            raise answer["error"]
        return answer["r"]

    def _progress(self, key: str):
        """``(done, total)`` of the request sent with ``key``, or None (not begun, ended, unknown)."""
        try:
            r = self._http.get(f"/progress/{key}", timeout=5)
            if r.status_code != 200:
                return None
            step = r.json()
            done, total = int(step["done"]), int(step["total"])
        except Exception:  # noqa: BLE001 - progress is best effort; the answer is what counts
            return None
        return (done, total) if total > 0 and 0 <= done <= total else None

    def _cancel(self, key: str) -> None:
        try:
            self._http.delete(f"/progress/{key}", timeout=5)
        except Exception:  # noqa: BLE001 - the server may be gone; nothing to stop then
            pass

    def detect_nuclei(self, image, model_ref=BUNDLED, **options):
        """``infer("instances", ...)``: returns ``(labels uint32, table or None)``."""
        return (yield from self.infer("instances", image, model_ref, **options))

    def classify(self, image, model_ref=BUNDLED, **options):
        """``infer("classification", ...)``: returns the Classification of ``region``."""
        return (yield from self.infer("classification", image, model_ref, **options))

    def segment_region(self, image, model_ref=BUNDLED, *, tile=None, overlap=64, region=None, threshold=0.5):
        """One request: the server tiles, batches and blends ``image`` (or ``region`` of it)."""
        params = {"model": self.server_ref(model_ref), "overlap": overlap}
        if tile:
            params["tile"] = tile
        if region is not None:
            params["region"] = ",".join(str(int(v)) for v in region)
        body, headers = wire.encode(np.asarray(image), "uint8")
        r = self.request("POST", "/segment", params=params, content=body, headers=headers)
        return prediction(self._array(r), r.headers.get("x-region"), threshold)

    def segment_slide(self, path: str, model_ref=BUNDLED, *, level=0, region=None, tile=None, overlap=64,
                      threshold=0.5):
        """A region of a slide the server reads itself (``path`` relative to its ``--slides``)."""
        payload = {"path": str(path), "level": int(level), "model": self.server_ref(model_ref),
                   "overlap": int(overlap), "tile": tile,
                   "region": None if region is None else [int(v) for v in region]}
        r = self.request("POST", "/segment-slide", json=payload)
        return prediction(self._array(r), r.headers.get("x-region"), threshold)

    def explain(self, image, model_ref=BUNDLED, method="gradcam", *, region=None, target="mask", layer=None,
                tile=None, overlap=64, device=None, task="segmentation", **options):
        """Generator like :meth:`LocalBackend.explain`; the region and ``overlap`` px of
        context around it are sent, the heat map of the region comes back. Another ``task``
        (classification: ``region`` is a mask) sends the image and options in one request."""
        from napari_histoseg.core.windows import check_image

        if task != "segmentation":
            return (yield from self._explain_task(task, image, model_ref, method, region=region, **options))

        image = check_image(image)
        H, W = image.shape[:2]
        ry, rx, rh, rw = region if region is not None else (0, 0, H, W)
        y0, x0 = max(ry - overlap, 0), max(rx - overlap, 0)
        y1, x1 = min(ry + rh + overlap, H), min(rx + rw + overlap, W)
        yield 0, 1
        crop = np.asarray(image[y0:y1, x0:x1])
        params = {"model": self.server_ref(model_ref), "method": method, "overlap": overlap,
                  "region": f"{ry - y0},{rx - x0},{rh},{rw}"}
        if tile:
            params["tile"] = tile
        if layer:
            params["layer"] = layer
        if isinstance(target, np.ndarray):
            body, headers = wire.npz(image=crop, target=target.astype(bool)), {"Content-Type": wire.NPZ}
        else:
            params["target"] = target
            body, headers = wire.encode(crop, "uint8")
        r = self.request("POST", "/explain", params=params, content=body, headers=headers)
        yield 1, 1
        return self._array(r).astype(np.float32)

    def _explain_task(self, task, image, model_ref, method, **options):
        from napari_histoseg.tasks import check_infer_options, get_task

        t = get_task(task)
        options = {k: v for k, v in options.items() if v is not None}
        if not t.EXPLAIN_OPTIONS:
            raise ValueError(f"{t.title} ({task}) has no explanations")
        check_infer_options(t, options, t.EXPLAIN_OPTIONS)
        ref = self.server_ref(model_ref, task)
        arrays = {k: np.asarray(v) for k, v in options.items() if isinstance(v, np.ndarray)}
        rest = {k: v for k, v in options.items() if k not in arrays}
        body = wire.pack({"image": np.asarray(image), **arrays}, {"method": method, "options": rest})
        r = yield from self._tracked(f"/explain/{task}", ref, body)
        yield 1, 1
        return self._array(r).astype(np.float32)

    # -- fine-tuning ---------------------------------------------------------------
    def start_job(self, dataset, model_ref=BUNDLED, *, task: str | None = None, epochs=10, time_budget=15.0,
                  lr=1e-4, name=None, model_version=None, **train_options) -> dict:
        """Upload a training-data folder (zipped here; its ``models/`` is left out) and
        start fine-tuning on the server; returns the job's state (``id`` among it). ``task``
        defaults to the one the folder's dataset.json names."""
        from napari_histoseg.tasks import dataset_task

        sent = ("patch_size", "batch_size", "steps_per_epoch")
        unknown = sorted(set(train_options) - set(sent))
        if unknown:
            raise ValueError(f"fine-tuning on a server takes epochs, time_budget, lr, name, model_version, "
                             f"{', '.join(sent)}; not {', '.join(unknown)}")
        task = task or dataset_task(dataset)
        params = {"model": self.server_ref(model_ref, task), "task": task, "epochs": epochs,
                  "time_budget": time_budget, "lr": lr, **{k: v for k, v in train_options.items() if v is not None}}
        if name:
            params["name"] = name
        if model_version:
            params["model_version"] = model_version
        r = self.request("POST", "/jobs", params=params, content=zip_dataset(dataset),
                         headers={"Content-Type": "application/zip"})
        return r.json()

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/jobs/{job_id}").json()

    def cancel_job(self, job_id: str) -> dict:
        return self.request("DELETE", f"/jobs/{job_id}").json()

    def fetch_checkpoint(self, job_id: str, dest) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(self.request("GET", f"/jobs/{job_id}/checkpoint").content)
        return tmp.replace(dest)

    def fine_tune(self, dataset, out, init_checkpoint=BUNDLED, *, task: str | None = None, progress=None,
                  should_stop=None, poll: float = 1.0, **settings) -> dict:
        """Like :meth:`LocalBackend.fine_tune`: start a job, pass its progress on, cancel it
        when ``should_stop()``, and write the new checkpoint to ``out``."""
        job = self.start_job(dataset, init_checkpoint, task=task, **settings)
        seen_epochs, last_step = 0, None
        while True:
            if should_stop is not None and should_stop() and job["state"] == "running":
                job = self.cancel_job(job["id"])
            if progress is not None:
                for rec in job["epochs"][seen_epochs:]:
                    progress(rec)
                seen_epochs = len(job["epochs"])
                if job["step"] and job["step"] != last_step:
                    last_step = job["step"]
                    progress(job["step"])
            if job["state"] not in ("running", "cancelling"):
                break
            time.sleep(poll)
            job = self.job(job["id"])
        if job["state"] == "failed":
            raise BackendError(f"fine-tuning on {self.url} failed: {job['error']}")
        if job["checkpoint_ready"]:
            self.fetch_checkpoint(job["id"], out)
        summary = dict(job.get("summary") or {})
        summary.setdefault("stop_reason", job["state"])
        summary["job"], summary["server_model"] = job["id"], job.get("new_model")
        return summary
