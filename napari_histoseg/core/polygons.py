"""Exact raster <-> polygon conversion on the pixel grid (no napari, numpy only).

Pixel ``(row r, column c)`` is the unit square ``[c, c + 1] x [r, r + 1]`` (x right, y down),
the convention of QuPath and of GeoJSON exported from it.

* :func:`trace_rings` follows the pixel *edges* of a region (as QuPath's own tracing does), so
  every vertex is a pixel corner, the outer ring's area minus its holes' areas is the region's
  pixel count, and only collinear vertices are left out (lossless).
* :func:`fill_rings` is a scanline fill (even-odd over all rings: holes clear): a pixel is
  inside when its centre is. Its cost grows with the rows and the number of edges, not with
  edges x pixels, so a 20,000-vertex polygon fills in milliseconds.

Filling the traced rings gives back the region exactly.

>>> m = np.zeros((5, 6), bool); m[1:4, 1:5] = True; m[2, 2] = False
>>> rings = trace_rings(m)
>>> [len(r) - 1 for r in rings], [ring_area(r) for r in rings]
([4, 4], [12.0, -1.0])
>>> bool((fill_rings(rings, m.shape) == m).all())
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["trace_rings", "fill_rings", "ring_area"]


def ring_area(ring) -> float:
    """Signed shoelace area of a closed ring of ``[x, y]`` (positive: clockwise on screen,
    i.e. counter-clockwise with y up)."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def trace_rings(region) -> list[np.ndarray]:
    """The boundary rings of the foreground of ``region`` along pixel edges.

    Parameters
    ----------
    region : (H, W) bool array
        The pixels to outline (usually one 4-connected region in its bounding box).

    Returns
    -------
    rings : list of (N + 1, 2) float arrays of ``[x, y]``
        Closed rings (first vertex repeated) with vertices on pixel corners and no collinear
        vertices. Outer boundaries have positive :func:`ring_area`, holes negative. Where two
        pixels of the region meet only at a corner, the rings pass through that corner
        without crossing (a hole may touch its outer ring at one point, as OGC allows), so
        every ring is simple.
    """
    m = np.pad(np.asarray(region, bool), 1)
    h, w = m.shape
    fr, fc = np.nonzero(m)
    if fr.size == 0:
        return []
    pix = fr * w + fc
    starts, ends, owner = [], [], []
    # Sides of each foreground pixel facing the background, clockwise on screen (y down):
    # top (c, r) -> (c+1, r), right (c+1, r) -> (c+1, r+1), bottom (c+1, r+1) -> (c, r+1),
    # left (c, r+1) -> (c, r). The pixel is then on the walker's right.
    for dr, dc, (x0, y0, x1, y1) in ((-1, 0, (0, 0, 1, 0)), (0, 1, (1, 0, 1, 1)),
                                     (1, 0, (1, 1, 0, 1)), (0, -1, (0, 1, 0, 0))):
        k = ~m[fr + dr, fc + dc]
        r, c = fr[k], fc[k]
        starts.append((r + y0) * (w + 1) + c + x0)
        ends.append((r + y1) * (w + 1) + c + x1)
        owner.append(pix[k])
    start, end, own = np.concatenate(starts), np.concatenate(ends), np.concatenate(owner)
    order = np.argsort(start, kind="stable")
    s_sorted = start[order]
    lo = np.searchsorted(s_sorted, end, "left")
    hi = np.searchsorted(s_sorted, end, "right")
    nxt = order[lo]
    two = np.nonzero(hi - lo == 2)[0]
    if two.size:
        # a corner where two pixels of the region meet diagonally: continue along the other
        # pixel (the region is joined through the corner, so rings never cross themselves)
        a, b = order[lo[two]], order[lo[two] + 1]
        nxt[two] = np.where(own[a] == own[two], b, a)
    seen = bytearray(start.size)
    nxt_list = nxt.tolist()
    flat, bounds = [], [0]
    for e0 in range(start.size):  # one walk over all edges; the rest is vectorised
        e = e0
        while not seen[e]:
            seen[e] = 1
            flat.append(e)
            e = nxt_list[e]
        if len(flat) > bounds[-1]:
            bounds.append(len(flat))
    v = start[np.asarray(flat)]
    xy = np.stack([v % (w + 1) - 1, v // (w + 1) - 1], axis=1).astype(np.float64)
    b = np.asarray(bounds)
    size = np.diff(b)
    ring_of = np.repeat(np.arange(size.size), size)
    i = np.arange(len(flat))
    after = np.where(i + 1 == b[ring_of + 1], b[ring_of], i + 1)   # next vertex in the same ring
    d = xy[after] - xy
    before = np.empty_like(after)
    before[after] = i
    turn = np.any(d != d[before], axis=1)  # keep corners only (collinear vertices are lossless to drop)
    kept = np.cumsum(np.concatenate([[0], np.bincount(ring_of[turn], minlength=size.size)]))
    corners = xy[turn]
    return [np.vstack([corners[kept[k]:kept[k + 1]], corners[kept[k]:kept[k] + 1]]) for k in range(size.size)]


def fill_rings(rings, shape, *, offset=(0.0, 0.0), scale: float = 1.0) -> np.ndarray:
    """Pixels of a ``shape`` (H, W) grid whose centre lies inside ``rings`` (even-odd rule:
    an outer ring with its holes, or several rings of one polygon).

    ``rings`` are ``[x, y]`` sequences in a frame where pixel ``(r, c)`` of the grid is the
    square ``offset + scale * [c, c + 1] x [r, r + 1]``. Returns a bool array.
    """
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w + 1), np.uint8)
    xs0, ys0, xs1, ys1 = [], [], [], []
    for ring in rings:
        xy = np.asarray(ring, dtype=np.float64)[:, :2]
        if len(xy) < 3:
            continue
        x = (xy[:, 0] - offset[0]) / scale
        y = (xy[:, 1] - offset[1]) / scale
        if x[0] != x[-1] or y[0] != y[-1]:
            x, y = np.append(x, x[0]), np.append(y, y[0])
        xs0.append(x[:-1]); ys0.append(y[:-1]); xs1.append(x[1:]); ys1.append(y[1:])
    if not xs0:
        return np.zeros((h, w), bool)
    x0, y0, x1, y1 = (np.concatenate(v) for v in (xs0, ys0, xs1, ys1))
    # rows whose centre line y = r + 0.5 the edge crosses (half-open: [min, max))
    r_lo = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, h).astype(np.int64)
    r_hi = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, h).astype(np.int64)
    n = np.maximum(r_hi - r_lo, 0)
    keep = n > 0
    if not keep.any():
        return np.zeros((h, w), bool)
    x0, y0, x1, y1, r_lo, n = x0[keep], y0[keep], x1[keep], y1[keep], r_lo[keep], n[keep]
    edge = np.repeat(np.arange(n.size), n)
    rows = r_lo[edge] + (np.arange(edge.size) - np.repeat(np.cumsum(n) - n, n))
    yc = rows + 0.5
    t = (yc - y0[edge]) / (y1[edge] - y0[edge])
    xc = x0[edge] + t * (x1[edge] - x0[edge])
    # first pixel whose centre is right of the crossing; even-odd: +1/-1 toggles per crossing
    col = np.clip(np.ceil(xc - 0.5), 0, w).astype(np.int64)
    np.add.at(out, (rows, col), 1)
    return (np.cumsum(out, axis=1, dtype=np.uint8)[:, :w] & 1).astype(bool)
