#!/usr/bin/env bash
# Train the bundled tumour model on a lent GPU through the device tool (see the "Training on a
# GPU" section of napari_histoseg/weights/MODEL_CARD.md). Prepared, not run by default:
#
#   here:   bash tools/gpu/wheels.sh; python3 tools/gpu/pack_data.py   # .gpu/ (about 24 MiB, git-ignored)
#   device: run(command="bash tools/gpu/train_tumour.sh", carry=[".gpu"], timeout_s=540)
#   here:   histoseg evaluate ../shared/data/camelyon --model <files_at>/tumour.safetensors  (and bcss)
#
# It fetches nothing (the machine has no network; its python3 holds torch, timm, scikit-image,
# scipy, pillow, safetensors and tqdm): the one carried wheel (segmentation-models-pytorch) goes
# to /tmp/site and the package is imported from the working tree. The
# budget leaves the 10-minute command limit room for start-up and the final calibration.
set -euo pipefail
OUT="${OUT:-/tmp/histoseg-gpu-out}"
MINUTES="${MINUTES:-6}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl \
  || { echo "installing the carried wheel failed" >&2; exit 3; }
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
[ -f .gpu/camelyon/dataset.json ] || { echo "no .gpu/ data: run tools/gpu/pack_data.py here and carry .gpu" >&2; exit 2; }
python3 tools/gpu/train_tumour.py --data .gpu --out "$OUT" --minutes "$MINUTES" 2>&1 | tail -n 400 > "$OUT/stdout.log"
tail -n 5 "$OUT/stdout.log"
