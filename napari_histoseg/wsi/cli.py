"""``histoseg segment-slides``: whole slides of a cohort into OME-Zarr maps and a CSV report.

Import-light: nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from napari_histoseg.io.checks import float_arg, int_arg


def register(sub) -> None:
    p = sub.add_parser(
        "segment-slides", help="segment whole slides into OME-Zarr tumour maps and a CSV report",
        description="Stream each slide through the model block by block (tissue only) into OUTDIR/NAME.ome.zarr; "
                    "write OUTDIR/report.csv (tumour area in mm², tumour fraction of the tissue, time per slide). "
                    "A slide that fails is listed with the reason and the others go on; running the same command "
                    "again resumes unfinished slides.")
    p.add_argument("slides", nargs="+", help="slides: SVS, pyramidal (OME-)TIFF")
    p.add_argument("-o", "--outdir", required=True, help="folder for the OME-Zarr results and report.csv")
    p.add_argument("--model", default="bundled", help="a .safetensors checkpoint (default: the bundled model)")
    p.add_argument("--model-mpp", type=float_arg(0, 100, lo_open=True), help="µm per pixel the model was trained at (default: its metadata)")
    p.add_argument("--slide-mpp", type=float_arg(0, 100, lo_open=True), help="µm per pixel of the slides' full resolution (default: their metadata)")
    p.add_argument("--level", type=int_arg(0, 64), help="read this pyramid level as it is (no rescaling by mpp)")
    p.add_argument("--scheduler", help="address of a running dask.distributed scheduler (tcp://host:8786)")
    p.add_argument("--workers", type=int_arg(1, 256),
                   help="start a local dask.distributed cluster of N single-threaded worker processes; "
                        "without --scheduler or --workers: Dask's threaded scheduler in this process")
    p.add_argument("--threads", type=int_arg(1, 1024), default=None, help="torch threads in this process (threaded scheduler)")
    p.add_argument("--block", type=int_arg(128, 16384), default=2048, help="px of the map per task and per zarr chunk (default 2048)")
    p.add_argument("--tile", type=int_arg(64, 4096), default=None, help="tile edge in px (default: the model's)")
    p.add_argument("--overlap", type=int_arg(0, 2048), default=64, help="tile overlap and block context in px (default 64)")
    p.add_argument("--threshold", type=float_arg(0, 1, lo_open=True, hi_open=True), default=0.5,
                   help="tumour probability at or above which a pixel is tumour, in (0, 1) (default 0.5)")
    p.add_argument("--no-tissue", action="store_true", help="segment everything, not only detected tissue")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--overwrite", action="store_true", help="replace results made with other settings")
    p.add_argument("--report", help="CSV report path (default OUTDIR/report.csv)")
    p.set_defaults(func=cmd_segment_slides)


def _client(args):
    if args.scheduler:
        from distributed import Client

        return Client(args.scheduler, timeout="10s"), None
    if args.workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True)
        return Client(cluster), cluster
    return None, None


def cmd_segment_slides(args) -> int:
    from tqdm import tqdm

    from napari_histoseg.wsi import segment_cohort

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    client, cluster = _client(args)
    bar = {"bar": None}

    def progress(name, done, total):
        if bar["bar"] is None or bar["bar"].desc != name:
            if bar["bar"] is not None:
                bar["bar"].close()
            bar["bar"] = tqdm(total=total, desc=name, unit="block")
        bar["bar"].total = total
        bar["bar"].n = done
        bar["bar"].refresh()

    def on_slide(row):
        if bar["bar"] is not None:
            bar["bar"].close()
            bar["bar"] = None
        if row["status"] == "ok":
            area = f"{row['tumour_mm2']} mm² tumour" if row.get("tumour_mm2") != "" else "tumour area unknown (no mpp)"
            print(f"{Path(row['slide']).name}: {area}, {row['seconds']} s -> {row['output']}")
        else:
            print(f"{Path(row['slide']).name}: FAILED: {row['reason']}", file=sys.stderr)

    try:
        rows = segment_cohort(
            args.slides, args.outdir, report=args.report, on_slide=on_slide, progress=progress,
            scheduler=client, model=args.model, model_mpp=args.model_mpp, slide_mpp=args.slide_mpp,
            level=args.level, block=args.block, tile=args.tile, overlap=args.overlap, threshold=args.threshold,
            tissue=not args.no_tissue, device=args.device, overwrite=args.overwrite)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    failed = [r for r in rows if r["status"] != "ok"]
    report = args.report or str(Path(args.outdir) / "report.csv")
    print(f"{len(rows) - len(failed)} of {len(rows)} slides done; report: {report}")
    for r in rows:
        if r["status"] == "ok" and r.get("notes"):
            print(f"note: {Path(r['slide']).name}: {r['notes']}", file=sys.stderr)
            break
    return 1 if failed else 0
