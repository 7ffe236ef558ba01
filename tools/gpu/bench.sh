#!/usr/bin/env bash
# The GPU throughput run (benchmarks/gpu_bench.py), for the device tool:
#   here:   bash tools/gpu/wheels.sh
#   device: run(command="bash tools/gpu/bench.sh", carry=[".whl"], timeout_s=540)
# Writes $OUT/gpu_bench.json (after every section) and $OUT/gpu_bench.log. About 4-6 minutes on an
# H200; each section is guarded, so one failing does not lose the others.
set -uo pipefail
source tools/gpu/env.sh
OUT="${OUT:-/tmp/histoseg-gpu-out}"
mkdir -p "$OUT"
timeout 500 python3 benchmarks/gpu_bench.py --out "$OUT" 2>&1 | grep -v -i "warning" | tee "$OUT/gpu_bench.log"
