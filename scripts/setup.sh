#!/usr/bin/env bash
# Creates .venv and installs everything masqclip_ros needs (library, training, export, ROS 2
# wheels, test tools), then builds the ROS interfaces into the venv. Idempotent: a second run
# only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MASQCLIP_VENV:-.venv}

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
stamp="$VENV/.masqclip-setup"
# Reinstall only when the requirements changed since the last successful run.
want=$(cat scripts/requirements.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$PY" -m pip install --quiet --upgrade pip
  # torch first and pinned: the CUDA build runs on the CPU here and on a GPU where there is one.
  "$PY" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  "$PY" -m pip install --quiet -r scripts/requirements.txt
  "$PY" -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
# ROS 2 wheels and the build of this package's interfaces into the venv.
scripts/setup_ros.sh "$VENV"
"$PY" -c 'import torch, open_clip, onnxruntime, rclpy, masqclip, masqclip_ros.msg
print("setup: ok, torch", torch.__version__)'
