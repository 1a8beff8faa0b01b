#!/usr/bin/env python3
"""Make a prefix holding an editable (``pip install -e``) saom_ros a ROS prefix.

An editable install writes none of setup.py's ``data_files``, so ``ros2 run``, ``ros2 launch``
and ament_index_python would not find the package. This links them into the prefix the way
``colcon build --symlink-install`` does (edits to launch/ and config/ apply at once), puts
every console script under ``lib/saom_ros/`` (where ``ros2 run`` looks), and adds a ``.pth``
file that appends the prefix to ``AMENT_PREFIX_PATH`` in every Python process of the venv.

Idempotent and quick; scripts/setup.sh runs it on every ``make setup``.
"""
from __future__ import annotations

import argparse
import os
import runpy
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
PTH_NAME = "saom_ros_ament_prefix.pth"
# Run at start-up of every Python in the venv (site.py executes .pth lines starting "import").
# The venv goes last: it is the underlay, and a colcon workspace sourced over it still wins.
PTH_LINE = ("import os, sys; _p = os.environ.get('AMENT_PREFIX_PATH', ''); "
            "sys.prefix in _p.split(os.pathsep) or os.environ.__setitem__("
            "'AMENT_PREFIX_PATH', os.pathsep.join(filter(None, (_p, sys.prefix))))\n")


def setup_arguments() -> dict[str, Any]:
    """The keyword arguments setup.py passes to setuptools.setup (its data_files, scripts)."""
    captured: dict[str, Any] = {}
    cwd = os.getcwd()
    os.chdir(ROOT)  # setup.py globs relative paths
    try:
        with mock.patch("setuptools.setup", lambda **kwargs: captured.update(kwargs)):
            runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    finally:
        os.chdir(cwd)
    return captured


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def install(prefix: Path) -> list[Path]:
    """Link data files and console scripts into ``prefix``; returns the links made."""
    args = setup_arguments()
    package = args["name"]
    # These folders hold only what this script links: start clean, so no stale link survives.
    for owned in (prefix / "share" / package, prefix / "lib" / package):
        if owned.is_symlink() or owned.is_file():
            owned.unlink()
        elif owned.exists():
            shutil.rmtree(owned)
    made = []
    for dest, files in args["data_files"]:
        for name in files:
            made.append(prefix / dest / Path(name).name)
            _link(ROOT / name, made[-1])
    # pip writes console scripts (with this venv's interpreter) to bin/; ros2 run wants them in
    # lib/<package>/. They replace data-file launchers of the same name, as under colcon.
    bin_dir = Path(sysconfig.get_path("scripts", vars={"base": str(prefix)}))
    for entry in args["entry_points"]["console_scripts"]:
        name = entry.split("=", 1)[0].strip()
        if not (bin_dir / name).is_file():
            raise SystemExit(f"{bin_dir / name} is missing: install saom_ros first "
                             "(pip install -e .)")
        made.append(prefix / "lib" / package / name)
        _link(bin_dir / name, made[-1])
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix)}))
    site.mkdir(parents=True, exist_ok=True)
    (site / PTH_NAME).write_text(PTH_LINE)
    return list(dict.fromkeys(made))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefix", nargs="?", type=Path, default=Path(sys.prefix),
                        help="the prefix (a venv) holding the editable install "
                        "(default: this Python's, %(default)s)")
    prefix = parser.parse_args(argv).prefix.resolve()
    made = install(prefix)
    print(f"linked {len(made)} files of saom_ros into {prefix} (share/, lib/saom_ros/); "
          f"{PTH_NAME} appends it to AMENT_PREFIX_PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
