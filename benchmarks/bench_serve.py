"""Serving throughput: 1, 4 and 16 concurrent clients segmenting 1024 x 1024 regions.

Three ways to do the same work, side by side in one process:

* ``in-process``  N threads call ``LocalBackend.segment`` on one shared model (no server);
* ``server, batching``  N clients POST /segment to ``histoseg serve`` on loopback (a
  uvicorn thread of this process), which stacks concurrent tile batches into one pass;
* ``server, no batching``  the same server with batching off (requests take turns).

Every client makes a bounded number of requests and stops issuing new ones after
``--time-limit`` seconds per configuration. Prints requests/s, p50 and p95 latency, the
server's mean forward-pass batch, and the ratio to in-process.

``--mixed`` instead runs the hostile load of :func:`napari_histoseg.server.loadtest.mixed_load`:
16 clients x 10 requests mixing good ones (``/segment`` of a ``--mixed-size`` region, checked
against a reference; ``/models``), bad ones (all must be 4xx) and unauthenticated
``--big-mb`` MB bodies (401), against a server with a token; prints what was right and the
process's peak RSS (the server and its clients share the process).

    python benchmarks/bench_serve.py [--clients 1 4 16] [--requests 16] [--time-limit 120]
                                     [--threads 2] [--model CKPT] [--json out.json]
    python benchmarks/bench_serve.py --mixed [--clients 16] [--per-client 10] [--big-mb 250]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np


def region_1024() -> np.ndarray:
    from napari_histoseg.plugin.samples import breast_carcinoma

    rgb = np.asarray(breast_carcinoma()[0][0])
    return np.ascontiguousarray(np.pad(rgb, ((0, 1024 - rgb.shape[0]), (0, 1024 - rgb.shape[1]), (0, 0)),
                                       mode="symmetric")[:1024, :1024])


def run_clients(n_clients: int, per_client: int, time_limit: float, make_call):
    """``make_call()`` -> a function that does one request; each client thread gets its own."""
    latencies, errors = [], []
    lock = threading.Lock()
    t_end = time.perf_counter() + time_limit
    barrier = threading.Barrier(n_clients)

    def client():
        call = make_call()
        barrier.wait()
        for _ in range(per_client):
            if time.perf_counter() > t_end:
                break
            t0 = time.perf_counter()
            try:
                call()
            except Exception as e:  # noqa: BLE001 - counted, printed
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": n_clients, "requests": len(latencies), "errors": len(errors), "wall_s": round(wall, 2),
            "req_per_s": round(len(latencies) / wall, 3), "p50_s": round(float(np.percentile(lat, 50)), 3),
            "p95_s": round(float(np.percentile(lat, 95)), 3), "first_error": errors[0] if errors else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=16, help="requests per configuration (split over clients; "
                                                            "at least one each)")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per configuration")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the same for every mode)")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--tile", type=int, default=None)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-pixels", type=int, default=None,
                   help="server's largest stacked batch in px (default: 2^22 on a GPU, 2^18 on a CPU)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--mixed", action="store_true", help="good, bad and unauthenticated large requests at once")
    p.add_argument("--per-client", type=int, default=10, help="--mixed: requests per client")
    p.add_argument("--big-mb", type=int, default=250, help="--mixed: size of each unauthenticated body")
    p.add_argument("--mixed-size", type=int, default=512, help="--mixed: side of the region each good /segment sends")
    args = p.parse_args(argv)
    if args.mixed:
        return run_mixed(args)

    import torch

    torch.set_num_threads(args.threads)
    from napari_histoseg.backends.local import LocalBackend
    from napari_histoseg.backends.remote import RemoteBackend
    from napari_histoseg.core.runs import drive
    from napari_histoseg.models.bundled import bundled_model_path
    from napari_histoseg.server.app import ServerConfig, create_app
    from napari_histoseg.server.thread import ServerThread

    ckpt = str(args.model or bundled_model_path())
    image = region_1024()
    local = LocalBackend()
    model = local.model(ckpt, "cpu")
    tile = args.tile or model.meta.tile_size
    print(f"# {model.description}, 1024 x 1024 region, tile {tile}, overlap {args.overlap}, torch threads "
          f"{args.threads}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    drive(local.segment(image, ckpt, device="cpu", tile=tile, overlap=args.overlap))  # warm-up

    rows = []

    def report(mode, row, extra=""):
        row = {"mode": mode, **row, "load1": round(os.getloadavg()[0], 2)}
        rows.append(row)
        print(f"{mode:22s} clients {row['clients']:2d}: {row['requests']:3d} req in {row['wall_s']:6.1f} s = "
              f"{row['req_per_s']:6.3f} req/s, p50 {row['p50_s']:6.2f} s, p95 {row['p95_s']:6.2f} s"
              f"{extra}, load {row['load1']:.1f}" + (f", {row['errors']} errors: {row['first_error']}"
                                                     if row["errors"] else ""), flush=True)

    def per_client(n):
        return max(1, args.requests // n)

    servers = {}
    for batching in (True, False):
        app = create_app(ServerConfig(device="cpu", models=[ckpt], bundled=False, batching=batching,
                                      max_batch_pixels=args.batch_pixels))
        srv = ServerThread(app)
        url = srv.start()
        entry = next(iter(app.state.store.entries.values()))
        RemoteBackend(url).segment_region(image, entry.ref, tile=tile, overlap=args.overlap)  # warm-up
        servers["server, batching" if batching else "server, no batching"] = (srv, url, entry)

    # the modes take turns for each client count, so each comparison is measured minutes apart
    # at most (other jobs on a shared machine change the load)
    for n in args.clients:
        row = run_clients(n, per_client(n), args.time_limit, lambda: lambda: drive(
            local.segment(image, ckpt, device="cpu", tile=tile, overlap=args.overlap)))
        report("in-process", row)
        for mode, (_srv, url, entry) in servers.items():
            passes0, tiles0 = entry.batcher.passes, entry.batcher.tiles

            def make_call(url=url, ref=entry.ref):
                client = RemoteBackend(url, timeout=600)
                return lambda: client.segment_region(image, ref, tile=tile, overlap=args.overlap)

            row = run_clients(n, per_client(n), args.time_limit, make_call)
            passes, tiles = entry.batcher.passes - passes0, entry.batcher.tiles - tiles0
            row["mean_batch"] = round(tiles / passes, 2) if passes else 0.0
            report(mode, row, f", mean batch {row['mean_batch']:.1f} tiles")
    for srv, _, _ in servers.values():
        srv.stop()

    print("\n| clients | mode | req/s | p50 s | p95 s | x in-process req/s | mean batch |")
    print("|---|---|---|---|---|---|---|")
    base = {r["clients"]: r["req_per_s"] for r in rows if r["mode"] == "in-process"}
    for r in sorted(rows, key=lambda r: (r["clients"], r["mode"])):
        ratio = r["req_per_s"] / base[r["clients"]] if base.get(r["clients"]) else float("nan")
        print(f"| {r['clients']} | {r['mode']} | {r['req_per_s']:.3f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | "
              f"{ratio:.2f} | {r.get('mean_batch', '')} |")
    print(f"# server batch budget: {args.batch_pixels or 'default (2^18 px on this CPU)'}")
    print(f"# load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def run_mixed(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    from napari_histoseg.models.bundled import bundled_model_path
    from napari_histoseg.server.app import ServerConfig, create_app
    from napari_histoseg.server.loadtest import mixed_load
    from napari_histoseg.server.thread import ServerThread

    token = "bench-token-0123456789abcdef"
    clients = args.clients[-1]
    ckpt = Path(args.model or bundled_model_path())
    side = args.mixed_size
    image = np.ascontiguousarray(region_1024()[:side, :side])
    app = create_app(ServerConfig(device="cpu", token=token, models=[ckpt], bundled=False))
    ref = next(iter(app.state.store.entries))
    print(f"# mixed load: {clients} clients x {args.per_client} requests, good /segment of {side} x {side} px "
          f"({app.state.store.entries[ref].model.description}), unauthenticated bodies of {args.big_mb} MB, "
          f"torch threads {args.threads}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start",
          flush=True)
    with ServerThread(app) as url:
        got = mixed_load(url, token, ref, image, clients=clients, per_client=args.per_client, big_mb=args.big_mb)
    got["load1_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(got, indent=1))
    print(f"| {clients} x {args.per_client} | {got['good_right']}/{got['good']} | {got['bad_right']}/{got['bad']} | "
          f"{got['unauthenticated_right']}/{got['unauthenticated']} | {got['wall_s']} | {got['good_p50_s']} / "
          f"{got['good_p95_s']} | {got['rss_start_mb']} | {got['rss_peak_mb']} (+{got['rss_growth_mb']}) |")
    if args.json:
        Path(args.json).write_text(json.dumps(got, indent=1))
    return 0 if not got["wrong"] else 1


if __name__ == "__main__":
    sys.exit(main())
