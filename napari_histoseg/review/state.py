"""A reviewer's progress through a slide, saved beside the result (one file per reviewer).

``REVIEW_DIR/REVIEWER.json`` holds the grid (origin, field size, level, map shape), the
ranking and, per field in review order, its status (``unreviewed``, ``accepted``,
``corrected``, ``flagged``, ``skipped``), who set it, when (ISO 8601, UTC) and the path
(relative to ``REVIEW_DIR``) of its edit map: the corrected mask of the field, a 0/1 PNG
in ``REVIEW_DIR/REVIEWER-edits/``. Every write goes to a temporary file in the same
folder first and is renamed into place, so a crash leaves the previous state readable;
two reviewers have two files and never overwrite each other.

A field counts as *reviewed* once it is accepted, corrected or flagged (a flagged field
has been looked at and needs a second opinion); skipped ones wait.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from napari_histoseg.review.fields import Field, ReviewSource, make_fields
from napari_histoseg.review.ranking import DEFAULT_RANKING, rank_fields

__all__ = ["STATUSES", "REVIEWED", "ReviewState", "open_review", "reviewers", "reviewer_file"]

STATUSES = ("unreviewed", "accepted", "corrected", "flagged", "skipped")
REVIEWED = ("accepted", "corrected", "flagged")
FORMAT = "histoseg-review"
VERSION = 1


def _safe(name: str) -> str:
    s = re.sub(r"[^\w.-]+", "_", str(name).strip()).strip("._")
    if not s:
        raise ValueError("give the reviewer a name (it names the review file)")
    return s


def reviewer_file(review_dir, reviewer: str) -> Path:
    return Path(review_dir) / f"{_safe(reviewer)}.json"


def reviewers(review_dir) -> list[str]:
    """The reviewers with a saved review in ``review_dir``."""
    d = Path(review_dir)
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class ReviewState:
    """Statuses of the fields of one slide for one reviewer, in review order."""

    reviewer: str
    review_dir: Path
    fields: list[Field]
    size: int
    shape: tuple[int, int]
    ranking: str = DEFAULT_RANKING
    seed: int = 0
    records: dict = field(default_factory=dict)   # field index -> {"status", "who", "when", "edit_map"}
    position: int = 0
    created: str = field(default_factory=_now)
    resumed: bool = False

    @property
    def path(self) -> Path:
        return reviewer_file(self.review_dir, self.reviewer)

    # -- statuses ------------------------------------------------------------------
    def record(self, f: Field | int) -> dict:
        i = f.index if isinstance(f, Field) else int(f)
        return self.records.setdefault(i, {"status": "unreviewed", "who": None, "when": None, "edit_map": None})

    def status(self, f: Field | int) -> str:
        return self.record(f)["status"]

    def set_status(self, f: Field | int, status: str, who: str | None = None, save: bool = True) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        rec = self.record(f)
        rec.update(status=status, who=who or self.reviewer, when=_now())
        if save:
            self.save()

    def save_edit(self, f: Field, mask: np.ndarray, status: str = "corrected", save: bool = True) -> Path:
        """Keep a field's corrected mask (0/1) as its edit map, and mark it ``status``."""
        from skimage.io import imsave

        mask = np.asarray(mask)
        if mask.shape != (f.h, f.w):
            raise ValueError(f"the edit of field {f.index} is {mask.shape}, the field is {(f.h, f.w)}")
        rel = f"{_safe(self.reviewer)}-edits/field-{f.index:06d}.png"
        final = self.review_dir / rel
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp.png"
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            imsave(tmp, (mask == 1).astype(np.uint8), check_contrast=False)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        self.record(f)["edit_map"] = rel
        self.set_status(f, status, save=save)
        return final

    def edit_of(self, f: Field) -> np.ndarray | None:
        """The field's saved corrected mask, or None."""
        rel = self.record(f).get("edit_map")
        if not rel or not (self.review_dir / rel).is_file():
            return None
        from skimage.io import imread

        return (imread(self.review_dir / rel) != 0).astype(np.uint8)

    # -- progress ------------------------------------------------------------------
    def counts(self) -> dict:
        out = dict.fromkeys(STATUSES, 0)
        for f in self.fields:
            out[self.status(f)] += 1
        return out

    def reviewed_fraction_of_tumour(self) -> float | None:
        total = sum(f.tumour_px for f in self.fields)
        if total <= 0:
            return None
        return sum(f.tumour_px for f in self.fields if self.status(f) in REVIEWED) / total

    def progress(self) -> str:
        """``"23 of 140 fields reviewed, 61 % of tumour area"`` (and how many are flagged)."""
        c = self.counts()
        n = sum(c[s] for s in REVIEWED)
        frac = self.reviewed_fraction_of_tumour()
        tum = "no tumour in the mask" if frac is None else f"{100 * frac:.0f} % of tumour area"
        extra = [f"{c[s]} {s}" for s in ("flagged", "skipped") if c[s]]
        return f"{n} of {len(self.fields)} fields reviewed, {tum}" + (f" ({', '.join(extra)})" if extra else "")

    def next_unreviewed(self, start: int = 0) -> int | None:
        """Position of the first field from ``start`` on (wrapping) not yet reviewed."""
        n = len(self.fields)
        for k in range(n):
            p = (start + k) % n
            if self.status(self.fields[p]) not in REVIEWED:
                return p
        return None

    # -- files ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "reviewer": self.reviewer, "created": self.created,
                "saved": _now(),
                "grid": {"origin": [0, 0], "size": self.size, "level": 0, "shape": list(self.shape)},
                "ranking": {"method": self.ranking, "seed": self.seed}, "position": self.position,
                "fields": [{**f.to_dict(), **self.record(f)} for f in self.fields]}

    def save(self) -> Path:
        _atomic_write(self.path, json.dumps(self.to_dict(), indent=1).encode())
        return self.path

    @classmethod
    def load(cls, path) -> "ReviewState":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a readable review file: {e}") from e
        if d.get("format") != FORMAT or int(d.get("version", 0)) > VERSION:
            raise ValueError(f"{path} is not a histoseg review file (version {VERSION} or older)")
        keys = set(Field.__dataclass_fields__)
        fields = [Field(**{k: v for k, v in r.items() if k in keys}) for r in d["fields"]]
        records = {r["index"]: {k: r.get(k) for k in ("status", "who", "when", "edit_map")} for r in d["fields"]}
        g = d["grid"]
        return cls(reviewer=d["reviewer"], review_dir=path.parent, fields=fields, size=int(g["size"]),
                   shape=tuple(g["shape"]), ranking=d["ranking"]["method"], seed=int(d["ranking"].get("seed", 0)),
                   records=records, position=int(d.get("position", 0)), created=d.get("created", _now()),
                   resumed=True)


def open_review(source: ReviewSource, reviewer: str, *, size: int | None = None, ranking: str | None = None,
                seed: int = 0, min_tissue: float = 0.05) -> ReviewState:
    """The review of ``source`` by ``reviewer``: the saved one when there is one (its grid
    and order kept), else a new one (fields of ``size`` px, default 512, ranked by
    ``ranking``, default :data:`~napari_histoseg.review.ranking.DEFAULT_RANKING`), saved at once.

    A saved review with another field size or ranking than asked for is refused, not
    replaced: a person's work is not thrown away.
    """
    f = reviewer_file(source.review_dir, reviewer)
    if f.is_file():
        state = ReviewState.load(f)
        if tuple(state.shape) != tuple(source.shape):
            raise ValueError(f"{f} reviews a map of {tuple(state.shape)} px, but this one is {source.shape}")
        for asked, kept, what in ((size, state.size, "fields of"), (ranking, state.ranking, "ranking")):
            if asked is not None and asked != kept:
                raise ValueError(f"{reviewer} already reviews this slide with {what} {kept} ({f}); keep that, "
                                 f"or review under another name")
        state.reviewer = reviewer
        return state
    fields = make_fields(source, size or 512, min_tissue=min_tissue)
    if not fields:
        raise ValueError("no field holds tissue: nothing to review")
    ordered = rank_fields(fields, ranking or DEFAULT_RANKING, seed=seed)
    state = ReviewState(reviewer=reviewer, review_dir=Path(source.review_dir), fields=ordered, size=int(size or 512),
                        shape=tuple(source.shape), ranking=ranking or DEFAULT_RANKING, seed=seed)
    state.save()
    return state
