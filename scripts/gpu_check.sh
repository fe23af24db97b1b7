#!/usr/bin/env bash
# One-shot check of the GPU path on a fresh machine with an NVIDIA GPU, install included:
#   1. a venv that keeps the machine's own CUDA build of torch where it has one, plus this
#      project (and TensorRT where pip can get it);
#   2. the gpu-marked tests (torch fp16, onnxruntime CUDA, the TensorRT engine build with fp16
#      parity against torch fp32);
#   3. bench_gpu at 640x480 for masqclip_r50_vitb16 and masqclip_r50_vitl14_336, written to
#      docs/benchmarks/gpu_<gpu name>.md with the command that produced it.
# Usage: scripts/gpu_check.sh            (about 5-8 minutes on an H100-class GPU)
# Offline machines: MASQCLIP_WHEELS=DIR installs the missing packages from wheels in DIR only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
log() { printf '[gpu_check %4ds] %s\n' "$SECONDS" "$*"; }

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) || true
[ -n "$gpu" ] || { echo 'gpu_check: no NVIDIA GPU here (nvidia-smi found none)' >&2; exit 1; }
slug=$(printf '%s' "$gpu" | tr -cs 'A-Za-z0-9' '_' | sed 's/^_//; s/_$//' | tr 'A-Z' 'a-z')
log "GPU: $gpu"

VENV=${MASQCLIP_GPU_VENV:-.venv-gpu}
if [ -n "${MASQCLIP_WHEELS:-}" ]; then
  export PIP_NO_INDEX=1 PIP_FIND_LINKS=$(cd "$MASQCLIP_WHEELS" && pwd)
fi
# The system site packages stay visible: a GPU machine's preinstalled torch matches its driver.
[ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
PY=$VENV/bin/python
if ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  log 'installing torch (CUDA build)'
  "$PY" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
fi
log 'installing the project'
# Only what is missing: an offline machine then needs wheels for those alone.
missing=$("$PY" - <<'EOF'
import importlib.util, re
modules = {'open_clip_torch': 'open_clip', 'opencv-python-headless': 'cv2', 'pyyaml': 'yaml'}
for line in open('scripts/requirements.txt'):
    spec = line.split('#')[0].strip()
    name = re.split('[<>=!~ ]', spec)[0]
    if name and name != 'ruff' and importlib.util.find_spec(modules.get(name, name)) is None:
        print(spec)
EOF
)
[ -z "$missing" ] || "$PY" -m pip install --quiet $missing
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
if ! "$PY" -c 'import tensorrt' 2>/dev/null; then
  "$PY" -m pip install --quiet tensorrt-cu13 2>/dev/null \
    || log 'TensorRT is not installable here: its tests skip and bench_gpu stops at torch'
fi
"$PY" - <<'EOF'
import torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())
try:
    import tensorrt
    print('tensorrt', tensorrt.__version__)
except ImportError:
    print('tensorrt: not installed')
EOF

log 'gpu-marked tests'
tests=0
"$PY" -m pytest -q -m gpu -p no:cacheprovider test 2>&1 | tee /tmp/gpu_check_tests.log || tests=$?

log 'bench_gpu at 640x480 (builds the TensorRT fp16 engines)'
report=docs/benchmarks/gpu_$slug.md
"$PY" -m masqclip.tools.bench_gpu --model masqclip_r50_vitb16 masqclip_r50_vitl14_336 \
  --frame-size 640x480 --runs 30 --engine-cache-dir "${TMPDIR:-/tmp}/masqclip-gpu-cache" \
  --markdown "$report"
{
  echo
  echo 'gpu-marked tests (`scripts/gpu_check.sh`, step 2):'
  echo
  echo '```'
  tail -n 5 /tmp/gpu_check_tests.log
  echo '```'
} >> "$report"
log "done: $report (tests exit status $tests)"
exit "$tests"
