"""Memory of a CPU session, step by step, each step in a fresh process.

    python benchmarks/bench_memory.py [--json out.json]
    xvfb-run -a python benchmarks/bench_memory.py      # the viewer steps need a display

Each step runs in its own ``python -c`` so nothing is inherited: it prints the process's
resident memory now and at its peak (``/proc/self/status`` VmRSS / VmHWM) and whether torch
was imported. Steps: ``import torch`` alone; the package and every widget module; a napari
viewer alone; the viewer with every histoseg widget open; that plus the bundled tumour model
loaded by each engine; the Segment widget's model (engine ``auto``) and then an explanation through the
shared local backend, with the torch weights held after each; and two widgets asking a backend each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import sys
def _mem():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('VmRSS', 'VmHWM'):
            out[k] = int(v.split()[0]) / 1024
    return out
"""

WIDGETS = (("segment", "SegmentWidget"), ("explain", "ExplainWidget"), ("classify", "ClassifyWidget"),
           ("review", "ReviewWidget"), ("export", "ExportWidget"), ("finetune", "FineTuneWidget"),
           ("refine", "RefineWidget"), ("nuclei", "NucleiWidget"))

WEIGHTS = """
import gc
def weights_mb():
    # bytes of the torch tensors held by live networks, each tensor once
    import torch
    gc.collect()
    held = {}
    for o in gc.get_objects():
        if isinstance(o, torch.nn.Module):
            for t in [*o.parameters(recurse=False), *o.buffers(recurse=False)]:
                held[t.data_ptr()] = t.numel() * t.element_size()
    return sum(held.values()) / 1e6
"""

VIEWER = """
import napari
viewer = napari.Viewer(show=False)
"""

OPEN_WIDGETS = VIEWER + """
import importlib
for mod, name in %r:
    cls = getattr(importlib.import_module('napari_histoseg.plugin.widgets.' + mod), name)
    viewer.window.add_dock_widget(cls(viewer), name=name)
""" % (WIDGETS,)

STEPS = {
    "python + numpy": "import numpy",
    "import torch": "import torch",
    "import napari_histoseg + every widget module":
        "import importlib\nfor m, _ in %r: importlib.import_module('napari_histoseg.plugin.widgets.' + m)" % (WIDGETS,),
    "napari viewer alone": VIEWER,
    "viewer + every histoseg widget open": OPEN_WIDGETS,
    "viewer + widgets + bundled model, engine torch (fp32)": OPEN_WIDGETS + """
from napari_histoseg.plugin.widgets._model_choice import local_backend
local_backend().model('bundled', 'cpu', 'torch')
""",
    "viewer + widgets + bundled model, engine auto": OPEN_WIDGETS + """
from napari_histoseg.plugin.widgets._model_choice import local_backend
m = local_backend().model('bundled', 'cpu', 'auto')
print('# engine', m.engine)
""",
    "import torch + bundled model (no napari)": """
from napari_histoseg import load_model
load_model(device='cpu', engine='torch')
""",
    "bundled model, engine onnx-int8 (no napari)": """
from napari_histoseg import load_model
load_model(device='cpu', engine='onnx-int8')
""",
    "Segment (engine auto) then Explain: one shared backend": WEIGHTS + """
import numpy as np
from PIL import Image
from napari_histoseg.core.runs import drive
from napari_histoseg.plugin.widgets._model_choice import local_backend
backend = local_backend()   # held as the live widgets hold it
seg = backend.model('bundled', 'auto', 'auto')      # what the Segment widget asks for
print('# segment engine', seg.engine, '; tumour weights held %.1f MB' % weights_mb())
rgb = np.asarray(Image.open('napari_histoseg/sample_data/tiatoolbox_target_image.png').convert('RGB'))[:256, :256]
drive(backend.explain(rgb, 'bundled', 'gradcam'))    # what the Explain widget asks for
print('# after a Grad-CAM: tumour weights held %.1f MB' % weights_mb())
""",
    "two widgets' models: a backend each (before)": """
import napari_histoseg.plugin.widgets._model_choice  # noqa: F401 (the same imports as the step above)
from napari_histoseg.backends.local import LocalBackend
a = LocalBackend().model('bundled', 'cpu', 'torch'); b = LocalBackend().model('bundled', 'cpu', 'torch')
print('# copies', len({id(a), id(b)}))
""",
}


def run_step(code: str) -> dict:
    src = PROBE + code + "\nimport json\nprint(json.dumps({**_mem(), 'torch': 'torch' in sys.modules}))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=600, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    lines = out.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    res["notes"] = [ln[2:] for ln in lines[:-1] if ln.startswith("# ")]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--only", nargs="*", help="run only the steps whose name contains one of these")
    args = ap.parse_args(argv)
    print(f"load average before {os.getloadavg()[0]:.2f}")
    print(f"{'step':60s} {'RSS MB':>8s} {'peak MB':>8s} torch")
    rows = {}
    for name, code in STEPS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        r = run_step(code)
        rows[name] = r
        if "error" in r:
            print(f"{name:60s} failed: {r['error']}")
            continue
        notes = f"  ({'; '.join(r['notes'])})" if r["notes"] else ""
        print(f"{name:60s} {r['VmRSS']:8.0f} {r['VmHWM']:8.0f} {'yes' if r['torch'] else 'no'}{notes}", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
