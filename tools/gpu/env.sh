# Source at the start of a device command: installs the carried wheels (tools/gpu/wheels.sh) into
# /tmp/site and puts them and this checkout on PYTHONPATH. Nothing is fetched there.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "installing the carried wheels failed" >&2; exit 3; }
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, napari_histoseg; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
