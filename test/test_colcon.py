"""saom_ros in a ROS 2 workspace: `colcon build` and `colcon build --symlink-install` on a copy of
the package, then both halves imported and both executables run from the install space.

colcon comes from `make setup`'s own venv (.venv-colcon; colcon-core needs setuptools < 80), whose
Python has no torch, as /usr/bin/python3 of an apt colcon has none. The imports run in this venv's
Python, which has the dependencies (torch, rclpy) a ROS machine's Python would have; the installed
executables run by themselves with it first on PATH, as in an activated environment (README).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Optional

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


EXECUTABLES = ("segment_node", "saom-segment", "saom-train")
CONFIG_PROBE = """
from saom_ros.training.config import default_config_path
print(default_config_path())
"""


def sourced(ws: Path, *command: str, venv: Optional[Path] = None) -> subprocess.CompletedProcess:
    """``command`` run after ``. install/setup.sh`` in ``ws``, from a clean ROS environment, with
    ``venv``'s bin first on PATH (this venv's by default), as when it is activated."""
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH")}
    env.update(ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    bin_dir = venv / "bin" if venv else Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", os.defpath)])
    return subprocess.run(["sh", "-c", '. install/setup.sh && exec "$@"', "sh", *command],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=300)


def user_venv(path: Path) -> Path:
    """A venv like the README's user's: this venv's packages (torch, ...), seen through a .pth
    file, but a prefix of its own, which holds no share/saom_ros (make setup links one into this
    venv's, and that would hide where an install space's files are looked for)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(path)}))
    (site / "project_venv.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    assert not (path / "share").exists()
    return path


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

    # `ros2 run saom_ros <name>` runs <prefix>/lib/saom_ros/<name> by itself: its #! line picks
    # the python3 on PATH (the activated venv's), not colcon's Python (which has no torch).
    lib = prefix / "lib" / "saom_ros"
    for name in EXECUTABLES:
        with open(lib / name, "rb") as script:
            assert script.readline() == b"#!/usr/bin/env python3\n", name
    run = sourced(ws, str(lib / "saom-train"), "--help")
    assert run.returncode == 0 and "export" in run.stdout, run.stderr
    for name in ("saom-segment", "segment_node"):  # the node starts, and stops at a bad file
        run = sourced(ws, str(lib / name), "--ros-args", "-p", "checkpoint:=/nonexistent/model.pt")
        assert run.returncode == 1 and "/nonexistent/model.pt" in run.stdout + run.stderr, \
            (name, run.stdout, run.stderr)

    # saom-train finds config/train.yaml in the install space (through the ament index) with a
    # Python whose own prefix has no share/saom_ros
    venv = user_venv(tmp_path / "user-venv")
    probe = sourced(ws, "python3", "-c", CONFIG_PROBE, venv=venv)
    assert probe.returncode == 0, probe.stderr
    config = Path(probe.stdout.strip().splitlines()[-1])
    assert config == (ws / "src/saom_ros/config/train.yaml" if symlink
                      else prefix / "share/saom_ros/config/train.yaml")
    data = tmp_path / "no-such-dataset"
    run = sourced(ws, str(lib / "saom-train"), "evaluate", "--data", str(data), "--checkpoint",
                  str(tmp_path / "model.pt"), "--out", str(tmp_path / "eval"), "--device", "cpu",
                  venv=venv)
    assert run.returncode == 2 and f"dataset file {data} does not exist" in run.stderr, \
        (run.stdout, run.stderr)
