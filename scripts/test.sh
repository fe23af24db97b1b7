#!/usr/bin/env bash
# Runs the whole test suite in the venv made by scripts/setup.sh. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MASQCLIP_VENV:-.venv}
# ROS tests talk over loopback only, on a domain of their own.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
export AMENT_PREFIX_PATH="$(cd "$VENV" && pwd)${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fastdds_profile=$(pwd)/config/fastdds_local.xml
[ -f "$fastdds_profile" ] && export FASTDDS_DEFAULT_PROFILES_FILE="$fastdds_profile"
exec "$VENV/bin/python" -m pytest -q "$@"
