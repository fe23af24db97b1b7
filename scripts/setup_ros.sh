#!/usr/bin/env bash
# Installs ROS 2 Kilted from PyPI wheels into a venv and builds this package's interfaces
# (plus the vision_msgs test fixture) into it with cmake. Usage: scripts/setup_ros.sh [VENV]
# Idempotent: each step is skipped when its inputs did not change since its last success.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
VENV=$(cd "${1:-${MASQCLIP_VENV:-.venv}}" && pwd)
PY="$VENV/bin/python"

ros_wheels=(
  ros-kilted-rclpy ros-kilted-rmw-fastrtps-cpp ros-kilted-lifecycle-msgs
  ros-kilted-std-msgs ros-kilted-std-srvs ros-kilted-sensor-msgs ros-kilted-geometry-msgs
  ros-kilted-visualization-msgs ros-kilted-diagnostic-msgs
  ros-kilted-ament-cmake ros-kilted-ament-package ros-kilted-ament-cmake-python
  ros-kilted-ament-cmake-include-directories ros-kilted-ament-cmake-ros-core
  ros-kilted-rosidl-default-generators ros-kilted-rosidl-core-generators
  ros-kilted-rosidl-default-runtime ros-wheels-bootstrapper catkin_pkg
)

# Runs "$@" unless the stamp file holds the same hash of its inputs as last time.
step() {
  local name=$1 hash=$2
  shift 2
  local stamp="$VENV/.masqclip-ros-$name"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    return 0
  fi
  "$@"
  echo "$hash" > "$stamp"
}

install_wheels() {
  "$PY" -m pip install --quiet "${ros_wheels[@]}"
}

# The wheels' exported CMake files name the wheel builder's Python; point them at this one.
fix_cmake_paths() {
  local py_inc np_inc
  py_inc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_inc=$("$PY" -c 'import numpy; print(numpy.get_include())')
  # grep exits 1 when every file is already fixed.
  { grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" || true; } \
    | xargs -0 -r sed -i \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" \
      -e "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g"
}

# Configures, builds and installs the ament_cmake package $1 (source folder $2) into the venv.
build_package() {
  local build="$VENV/.build/$1" src=$2
  shift 2
  cmake -S "$src" -B "$build" -Wno-dev --log-level=WARNING \
    -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF "$@" \
    > "$build.log" 2>&1 || { mkdir -p "$build"; cat "$build.log" >&2; return 1; }
  cmake --build "$build" -j 2 >> "$build.log" 2>&1 || { tail -50 "$build.log" >&2; return 1; }
  cmake --install "$build" >> "$build.log" 2>&1 || { tail -50 "$build.log" >&2; return 1; }
}

hash_of() {
  cat "$@" | sha256sum | cut -d' ' -f1
}

# launch, launch_ros and ros2cli are not on PyPI: pure-Python wheels of them live beside the
# checkout (see its README). pip pulls in the rest (ros-launch, ros-ros2cli, ...) from there.
cli_dir=$(dirname "$root")/shared/ros-wheels
cli_wheels=(
  ros-ros2launch ros-launch-ros ros-launch-xml ros-launch-yaml ros-ros2topic ros-ros2service
  ros-ros2node ros-ros2lifecycle ros-ros2param ros-ros2pkg ros-ros2run ros-ros2interface
)

install_cli_wheels() {
  "$PY" -m pip install --quiet --find-links "$cli_dir" "${cli_wheels[@]}"
}

mkdir -p "$VENV/.build"
# The PATH entry lets cmake and the generators find the venv's tools (rosidl, ament).
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"

step wheels "$(printf '%s\n' "${ros_wheels[@]}" | sha256sum | cut -d' ' -f1)" install_wheels
fix_cmake_paths

fixture=test/fixtures/vision_msgs

# Symlink install: the node's modules, launch/ and config/ in the venv point at this checkout,
# so editing them needs no rebuild (only adding a file, which changes the hash below, does).
pkg_hash=$( { cat CMakeLists.txt package.xml msg/* srv/*; ls masqclip_ros launch config; } \
  | sha256sum | cut -d' ' -f1)
# A stamp proves nothing once its files are gone (e.g. removed by hand): check the import too.
"$PY" -c 'import masqclip_ros.msg, vision_msgs.msg' 2>/dev/null \
  || rm -f "$VENV/.masqclip-ros-interfaces" "$VENV/.masqclip-ros-vision-msgs"
step vision-msgs "$(hash_of "$fixture"/CMakeLists.txt "$fixture"/package.xml "$fixture"/msg/*)" \
  build_package vision_msgs "$root/$fixture"
step interfaces "$pkg_hash" build_package masqclip_ros "$root" \
  -DMASQCLIP_ROS_INSTALL_LIBRARY=OFF -DAMENT_CMAKE_SYMLINK_INSTALL=ON

if [ -d "$cli_dir" ]; then
  ci=$cli_dir/composition_interfaces
  "$PY" -c 'import ros2launch, ros2cli, composition_interfaces.srv' 2>/dev/null \
    || rm -f "$VENV/.masqclip-ros-cli-wheels" "$VENV/.masqclip-ros-composition-interfaces"
  # The wheel names hashed too: a new wheel version in the folder is installed.
  step cli-wheels "$( { printf '%s\n' "${cli_wheels[@]}"; ls "$cli_dir"; } | sha256sum \
    | cut -d' ' -f1)" install_cli_wheels
  # launch_ros imports composition_interfaces.srv at import time; it is a rosidl package.
  step composition-interfaces "$(hash_of "$ci"/CMakeLists.txt "$ci"/package.xml "$ci"/srv/*)" \
    build_package composition_interfaces "$ci"
  "$PY" -c 'import ros2launch, launch_ros.actions' \
    && echo "setup_ros: ok (ros2 launch and the ros2 CLI from $cli_dir)"
else
  echo "setup_ros: no $cli_dir (wheels of launch, launch_ros and ros2cli, not on PyPI):" \
    "the ros2 CLI / launch tests will be skipped"
fi

"$PY" -c 'import rclpy, masqclip_ros.msg, masqclip_ros.srv, vision_msgs.msg' \
  && echo "setup_ros: ok (ROS 2 Kilted wheels, masqclip_ros interfaces, vision_msgs fixture)"
