#!/usr/bin/env bash
# Fetch, HERE (where PyPI is reachable), the wheels a device run needs that the device image lacks
# (its python3 is 3.12 with torch, timm, scikit-image, tifffile, safetensors, onnxruntime, httpx;
# see ../.library/device/KINDS.md), into .whl/ at the repository root (ignored by git; carried).
#   bash tools/gpu/wheels.sh          then a device run with carry [".whl"] and tools/gpu/env.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64)
# versions pinned to what this project's CI resolves today (pip show here), so both ends agree
pkgs=(
  segmentation-models-pytorch==0.6.0
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c
  dask==2026.8.0 partd==1.4.2 locket==1.0.0
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.13.4 "pydantic-core==$(python3 -c 'import pydantic_core; print(pydantic_core.__version__)')"
  annotated-types annotated-doc typing-inspection opentelemetry-api importlib-metadata uvicorn==0.55.0
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d .whl "${pkgs[@]}"
ls -la .whl | awk '{s+=$5} END {print NR-3 " wheels, " s/1e6 " MB"}'
