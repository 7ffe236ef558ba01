"""A cohort: many slides, one OME-Zarr each, and a CSV report that survives failures.

A slide that cannot be read (truncated, corrupt, not a slide) or fails in the middle is
listed with ``status = failed`` and the reason; the run goes on with the next one. The CSV
is rewritten after every slide, so a cohort killed overnight still has its report so far,
and running the same command again resumes every unfinished slide where it stopped.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Callable, Optional

from napari_histoseg.io import image_suffix
from napari_histoseg.wsi.stream import iter_segment_slide

__all__ = ["segment_cohort", "REPORT_COLUMNS", "output_path"]

REPORT_COLUMNS = ["slide", "status", "reason", "output", "width_px", "height_px", "mpp", "level",
                  "resample", "tissue_mm2", "tumour_mm2", "tumour_fraction_of_tissue", "blocks",
                  "blocks_run", "tiles_skipped_fraction", "seconds", "notes"]


def output_path(slide, outdir) -> Path:
    """``OUTDIR/<slide name without its image suffix>.ome.zarr``."""
    name = Path(slide).name
    suffix = image_suffix(name)
    stem = name[: -len(suffix)] if suffix else Path(name).stem
    return Path(outdir) / f"{stem}.ome.zarr"


def _fmt(v, digits=4):
    if v is None:
        return ""
    return f"{v:.{digits}g}" if isinstance(v, float) else v


def segment_cohort(slides, outdir, *, report: Optional[str] = None,
                   on_slide: Optional[Callable[[dict], None]] = None,
                   progress: Optional[Callable[[str, int, int], None]] = None, **options) -> list[dict]:
    """Segment every slide into ``outdir``; write and return the report rows.

    Parameters
    ----------
    slides : list of paths
    outdir : path
        Gets one ``NAME.ome.zarr`` per slide and ``report.csv`` (or ``report``).
    on_slide : callable, optional
        Called with each row as it is finished.
    progress : callable, optional
        ``progress(slide_name, blocks_done, blocks_total)``.
    **options
        Passed to :func:`~napari_histoseg.wsi.iter_segment_slide` (``scheduler``,
        ``workers``, ``model``, ``model_mpp``, ``block``, ...).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    report = Path(report) if report else outdir / "report.csv"
    rows = []
    for slide in slides:
        t0 = time.perf_counter()
        out = output_path(slide, outdir)
        row = {"slide": str(slide), "status": "ok", "reason": "", "output": str(out)}
        try:
            gen = iter_segment_slide(slide, out, **options)
            while True:
                try:
                    done, total = next(gen)
                except StopIteration as stop:
                    res = stop.value
                    break
                if progress is not None:
                    progress(Path(slide).name, done, total)
            row.update(width_px=res.shape[1], height_px=res.shape[0], mpp=_fmt(res.mpp), level=res.level,
                       resample=_fmt(res.factor), tissue_mm2=_fmt(res.tissue_mm2),
                       tumour_mm2=_fmt(res.tumour_mm2),
                       tumour_fraction_of_tissue=_fmt(res.tumour_fraction_of_tissue),
                       blocks=res.blocks, blocks_run=res.blocks_run,
                       tiles_skipped_fraction=_fmt(res.tiles_skipped_fraction, 3))
            row["notes"] = "; ".join(res.warnings)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one bad slide must not stop the cohort
            row.update(status="failed", reason=f"{type(e).__name__}: {e}".replace("\n", " "))
        row["seconds"] = f"{time.perf_counter() - t0:.1f}"
        rows.append(row)
        _write(report, rows)
        if on_slide is not None:
            on_slide(row)
    return rows


def _write(path: Path, rows):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in REPORT_COLUMNS})
    tmp.replace(path)
