"""Time filling a many-vertex QuPath polygon into a mask (GeoJSON import).

    python3 benchmarks/bench_geojson.py [VERTICES] [RADIUS_PX]

A wavy, jittered circle of VERTICES vertices (two decimals, as QuPath writes them) filled
into a (2.4 R)^2 mask with :func:`napari_histoseg.core.geojson.geojson_to_mask`; prints the
time and the filled pixel count against the polygon's area.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from napari_histoseg.core.geojson_import import geojson_to_mask


def main(n: int = 20000, radius: float = 1000.0) -> None:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rng = np.random.default_rng(0)
    r = radius * (1 + 0.05 * np.sin(40 * t)) + rng.uniform(-3, 3, n)
    ring = np.stack([radius * 1.2 + r * np.cos(t), radius * 1.2 + r * np.sin(t)], 1).round(2)
    ring = np.vstack([ring, ring[:1]])
    shape = (int(radius * 2.4), int(radius * 2.4))
    t0 = time.perf_counter()
    m = geojson_to_mask({"type": "Polygon", "coordinates": [ring.tolist()]}, shape)
    dt = time.perf_counter() - t0
    x, y = ring.T
    area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
    print(f"{n} vertices, {shape[0]} x {shape[1]} mask: {dt:.3f} s, {int(m.sum())} px, polygon area {area:.0f} px²")


if __name__ == "__main__":
    main(*(int(sys.argv[1]),) if len(sys.argv) > 1 else (), *(float(sys.argv[2]),) if len(sys.argv) > 2 else ())
