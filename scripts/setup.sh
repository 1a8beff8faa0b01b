#!/usr/bin/env bash
# Create .venv and install everything saom_ros needs on a machine without a ROS distribution.
# Idempotent: each step is skipped when its inputs have not changed since it last succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=$VENV/bin/python
STAMPS=$VENV/.saom_stamps

step() { printf '\n[setup] %s\n' "$*"; }
fail() { printf '\n[setup] FAILED: %s\n' "$*" >&2; exit 1; }
# A step is current when the hash of its inputs matches the stamp it left last time.
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
is_current() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
mark_done() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || fail "Python 3.11 is required (the ROS 2 wheels are cp311); found $("$PYTHON" --version)"

if [ ! -x "$PY" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV" || fail "could not create the virtual environment"
fi

key=$(stamp_of requirements.txt)
if ! is_current requirements "$key"; then
  step "installing Python packages from requirements.txt (torch is ~5.5 GB; a few minutes)"
  "$PY" -m pip install --disable-pip-version-check -q --upgrade pip || fail "pip upgrade"
  "$PY" -m pip install --disable-pip-version-check -q -r requirements.txt \
    || fail "pip install -r requirements.txt (see the pip output above)"
  rm -f "$STAMPS/vision_msgs"   # new message wheels: rebuild vision_msgs against them
  mark_done requirements "$key"
else
  step "Python packages up to date"
fi

key=$(stamp_of requirements.txt ros_interfaces/vision_msgs/CMakeLists.txt \
      ros_interfaces/vision_msgs/package.xml ros_interfaces/vision_msgs/msg/*.msg)
if ! is_current vision_msgs "$key"; then
  step "building vision_msgs from ros_interfaces/vision_msgs into the venv"
  bash scripts/build_vision_msgs.sh "$VENV" || fail "building vision_msgs (see the cmake output above)"
  "$PY" -c 'import vision_msgs.msg' || fail "vision_msgs was built but does not import"
  mark_done vision_msgs "$key"
else
  step "vision_msgs up to date"
fi

key=$(stamp_of setup.py setup.cfg)
if ! is_current package "$key"; then
  step "installing saom_ros (editable)"
  "$PY" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e . \
    || fail "pip install -e ."
  mark_done package "$key"
else
  step "saom_ros up to date"
fi
COLCON_VENV=$ROOT/.venv-colcon
key=$(stamp_of requirements-colcon.txt)
if ! is_current colcon "$key" || [ ! -x "$COLCON_VENV/bin/colcon" ]; then
  step "installing colcon into $COLCON_VENV (a venv of its own: colcon-core needs setuptools < 80)"
  [ -x "$COLCON_VENV/bin/python" ] || "$PYTHON" -m venv "$COLCON_VENV" \
    || fail "could not create $COLCON_VENV"
  "$COLCON_VENV/bin/python" -m pip install --disable-pip-version-check -q \
    -r requirements-colcon.txt || fail "pip install -r requirements-colcon.txt"
  mark_done colcon "$key"
else
  step "colcon up to date"
fi
# Quick and idempotent, so it runs every time: what colcon would install besides the Python
# package (ament index marker, share/saom_ros, lib/saom_ros executables) makes the venv a ROS prefix.
"$PY" scripts/install_ros_prefix.py "$VENV" || fail "scripts/install_ros_prefix.py"
step "ready: $VENV"
