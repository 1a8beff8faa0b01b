#!/usr/bin/env bash
# Build the fallback vision_msgs (ros_interfaces/vision_msgs) into a venv holding the ROS 2 wheels.
# Usage: build_vision_msgs.sh VENV
set -euo pipefail
VENV=$(realpath "$1")
SRC=$(realpath "$(dirname "$0")/../ros_interfaces/vision_msgs")
PY=$VENV/bin/python
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT

# The wheels' exported CMake files keep the include paths of the machine that built them;
# point them at this venv's Python and numpy headers.
py_include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_include=$("$PY" -c 'import numpy; print(numpy.get_include())')
for f in $(grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" || true); do
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" "$f"
done

export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
  -DPython3_EXECUTABLE="$PY" -DCMAKE_INSTALL_PREFIX="$VENV" >"$BUILD/configure.log" 2>&1 \
  || { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" >"$BUILD/build.log" 2>&1 || { tail -50 "$BUILD/build.log"; exit 1; }
cmake --install "$BUILD" >/dev/null
