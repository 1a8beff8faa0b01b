"""saom_ros in a ROS 2 workspace: `colcon build` and `colcon build --symlink-install` on a copy of
the package, then both halves imported and both executables run from the install space.

colcon comes from `make setup`'s own venv (.venv-colcon; colcon-core needs setuptools < 80).
The imports run in this venv's Python, which has the dependencies (torch, rclpy) a ROS machine's
Python would have.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ros_domain import unique_domain_id

ROOT = Path(__file__).resolve().parents[1]
COLCON = ROOT / ".venv-colcon" / "bin" / "colcon"
# What a source checkout holds besides the package: never part of a workspace copy.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".venv-colcon", "build", "install", "log",
                                    "runs", "demo_output", "__pycache__", "*.egg-info",
                                    ".pytest_cache")
PROBE = """
import json, os, sys
import saom_ros, saom_ros.segment_node, saom_ros.training.cli as cli
from ament_index_python.packages import get_package_prefix, get_package_share_directory
print(json.dumps({"package": saom_ros.__file__, "cli": cli.__file__,
                  "cli_real": os.path.realpath(cli.__file__),
                  "prefix": get_package_prefix("saom_ros"),
                  "share": get_package_share_directory("saom_ros")}))
"""


def sourced(ws: Path, *command: str) -> subprocess.CompletedProcess:
    """``command`` run after ``. install/setup.sh`` in ``ws``, from a clean ROS environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH")}
    env.update(ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    return subprocess.run(["sh", "-c", '. install/setup.sh && exec "$@"', "sh", *command],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("symlink", [False, True], ids=["copy", "symlink-install"])
def test_colcon_build_installs_both_halves(tmp_path: Path, symlink: bool) -> None:
    assert COLCON.exists(), f"{COLCON} missing: run make setup"
    ws = tmp_path / "ws"
    shutil.copytree(ROOT, ws / "src" / "saom_ros", symlinks=True, ignore=NOT_SOURCE)
    build = [str(COLCON), "build"] + (["--symlink-install"] if symlink else [])
    out = subprocess.run(build, cwd=ws, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    # the fallback vision_msgs (COLCON_IGNORE) is not built beside the package
    assert sorted(p.name for p in (ws / "build").iterdir() if p.is_dir()) == ["saom_ros"]

    probe = sourced(ws, sys.executable, "-c", PROBE)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    prefix = ws / "install" / "saom_ros"
    assert found["prefix"] == str(prefix)
    assert found["share"] == str(prefix / "share" / "saom_ros")
    for path in ("package", "cli"):  # both halves from the workspace, not this checkout
        assert Path(found[path]).is_relative_to(ws), found
    if symlink:  # edits in the source space apply without a rebuild
        assert found["cli_real"] == str(ws / "src" / "saom_ros" / "training" / "cli.py")
        assert (prefix / "share/saom_ros/launch/segment.launch.py").is_symlink()
    else:
        assert Path(found["cli_real"]).is_relative_to(prefix)
    assert (prefix / "share/saom_ros/config/saom.yaml").is_file()
    assert (prefix / "share/ament_index/resource_index/packages/saom_ros").is_file()

    # `ros2 run saom_ros <name>` runs <prefix>/lib/saom_ros/<name>; here with this Python.
    lib = prefix / "lib" / "saom_ros"
    run = sourced(ws, sys.executable, str(lib / "saom-train"), "--help")
    assert run.returncode == 0 and "export" in run.stdout, run.stderr
    for name in ("saom-segment", "segment_node"):  # the node starts, and stops at a bad file
        run = sourced(ws, sys.executable, str(lib / name), "--ros-args", "-p",
                      "checkpoint:=/nonexistent/model.pt")
        assert run.returncode == 1 and "/nonexistent/model.pt" in run.stdout + run.stderr, \
            (name, run.stdout, run.stderr)
