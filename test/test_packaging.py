"""The installed layout that colcon, `ros2 run` and `ros2 launch` rely on: read from a built
wheel, and in the venv `make setup` made (which must be a ROS prefix)."""
import ast
import importlib.util
import os
import re
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIX = Path(sys.prefix)  # the venv `make setup` made; tests run in it
EXECUTABLES = ("segment_node", "saom-segment", "saom-train")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, cwd=out)
    (path,) = out.glob("saom_ros-*.whl")
    return zipfile.ZipFile(path)


def data_entries(wheel: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Entries installed relative to the prefix (the wheel's .data/data folder)."""
    return {i.filename.split(".data/data/", 1)[1]: i for i in wheel.infolist() if ".data/data/" in i.filename}


def test_ament_index_launch_config_and_manifest_install_under_share(wheel):
    installed = data_entries(wheel)
    for path in ("share/ament_index/resource_index/packages/saom_ros", "share/saom_ros/package.xml",
                 "share/saom_ros/launch/segment.launch.py", "share/saom_ros/config/saom.yaml"):
        assert path in installed, path


def test_ros2_run_finds_an_executable_segment_node(wheel):
    info = data_entries(wheel)["lib/saom_ros/segment_node"]
    assert (info.external_attr >> 16) & stat.S_IXUSR


def test_training_installs_inside_the_package_namespace(wheel):
    names = wheel.namelist()
    assert "saom_ros/training/__init__.py" in names
    assert not any(n.startswith("training/") for n in names)


def test_console_scripts(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    text = wheel.read(entry_points).decode()
    for script in ("segment_node = saom_ros.node_main:main", "saom-segment = saom_ros.node_main:main",
                   "saom-train = saom_ros.training.cli:main"):
        assert script in text


def test_package_xml_is_format_3_with_runtime_dependencies():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "saom_ros"
    deps = {e.text for e in root if e.tag in ("depend", "exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "vision_msgs", "diagnostic_msgs", "launch_ros"} <= deps
    assert root.find("export/build_type").text == "ament_python"


def imported_modules(*patterns: str) -> dict[str, set[str]]:
    """Absolute imports of the files matching ``patterns``: full module name -> files."""
    found: dict[str, set[str]] = {}
    for path in [p for pattern in patterns for p in ROOT.glob(pattern)]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and not node.level else [])
            for name in names:
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def is_ros(module: str) -> bool:
    return module.endswith("_msgs") or module in (
        "rclpy", "rcl_interfaces", "launch", "launch_ros", "ament_index_python", "cv_bridge",
        "message_filters")


def exec_depends() -> set[str]:
    return {e.text for e in ET.parse(ROOT / "package.xml").getroot()
            if e.tag in ("depend", "exec_depend")}


def test_package_xml_names_every_ros_package_the_code_imports():
    imported = {n.split(".")[0] for n in imported_modules("saom_ros/*.py", "training/*.py",
                                                          "launch/*.py")}
    ros = {n for n in imported if is_ros(n)}
    assert ros and ros <= exec_depends(), ros - exec_depends()


# What the code imports from outside the standard library and ROS: (pip distribution, rosdep key;
# None: pip only, on the README's pip line for real robots). Every such import must be listed here.
THIRD_PARTY = {
    "numpy": ("numpy", "python3-numpy"),
    "scipy": ("scipy", "python3-scipy"),
    "PIL": ("Pillow", "python3-pil"),
    "yaml": ("PyYAML", "python3-yaml"),
    "cv2": ("opencv-python-headless", "python3-opencv"),
    "tqdm": ("tqdm", "python3-tqdm"),
    "torch": ("torch", None),
    "torchvision": ("torchvision", None),
    "segment_anything": ("segment-anything", None),
    "pycocotools": ("pycocotools", None),
    "numba": ("numba", None),
    "llvmlite": ("numba", None),  # numba's own dependency
    "tensorboard": ("tensorboard", None),  # torch.utils.tensorboard: `saom-train train` logs
}
# Imports that need not be installed, and why.
OPTIONAL = {"triton": "CUDA decoder kernels; ships with CUDA torch, ImportError falls back",
            "ai2thor": "only `saom-train collect` (the simulator), installed for it"}


def _distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[]", name.strip(), maxsplit=1)[0]).lower()


def test_every_third_party_import_is_a_declared_dependency():
    imported: dict[str, set[str]] = {}
    for module, files in imported_modules("saom_ros/*.py", "training/*.py").items():
        top = "tensorboard" if module.startswith("torch.utils.tensorboard") else module.split(".")[0]
        if top not in sys.stdlib_module_names and top != "saom_ros" and not is_ros(top):
            imported.setdefault(top, set()).update(files)
    unknown = {m: sorted(f) for m, f in imported.items() if m not in THIRD_PARTY | OPTIONAL}
    assert not unknown, f"classify these imports in THIRD_PARTY or OPTIONAL: {unknown}"
    assert {"scipy", "PIL", "tensorboard"} <= imported.keys()  # the table is not stale

    install_requires = {_distribution(r) for r in _load_installer().setup_arguments()[
        "install_requires"]}
    requirements = {_distribution(line) for line in (ROOT / "requirements.txt").read_text()
                    .splitlines() if line.strip() and not line.startswith("#")}
    readme = (ROOT / "README.md").read_text().split("## Use on a real robot", 1)[1]
    (pip_line,) = [line for line in readme.split("\n## ", 1)[0].splitlines()
                   if line.startswith("pip install ")]
    readme_pip = {_distribution(n) for n in pip_line.split()[2:]}
    rosdep = exec_depends()
    for module in sorted(imported.keys() & THIRD_PARTY.keys()):
        dist, key = THIRD_PARTY[module]
        where = f"{module} (imported by {', '.join(sorted(imported[module]))})"
        assert _distribution(dist) in install_requires, f"{dist} not in install_requires: {where}"
        assert _distribution(dist) in requirements, f"{dist} not in requirements.txt: {where}"
        if key:
            assert key in rosdep, f"{key} not in package.xml: {where}"
        else:
            assert _distribution(dist) in readme_pip, f"{dist} not on README's pip line: {where}"


def test_train_without_tensorboard_says_so_before_any_work(tmp_path, monkeypatch, capsys):
    """`saom-train train` logs to TensorBoard: without it, it fails at once (before reading data,
    caching embeddings or clearing the run it is told to --overwrite) and names what is missing."""
    from saom_ros.training.cli import main

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("step\n")
    rc = main(["train", "--data", str(tmp_path / "data"), "--run-dir", str(run_dir), "--overwrite",
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "tensorboard" in err.partition("cannot import what it needs:")[2], err
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "checkpoints").is_dir()


@pytest.mark.parametrize("target", ["test", "test-fast"])
def test_make_test_fails_saying_so_when_pytest_collects_nothing(target):
    # -o setup: the venv is there (the tests run in it); not the settings of a `make test` above
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "-o", "setup", target, f"PY={sys.executable}",
                          "PYTEST_ARGS=-p no:cacheprovider test/test_packaging.py -k no_such_test"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "0 selected" in out.stdout, out.stdout + out.stderr
    assert "pytest collected no tests; failing" in out.stderr, out.stderr
    assert "make test " in (ROOT / ".ci" / "run").read_text()  # what CI runs


def test_fallback_vision_msgs_is_hidden_from_colcon():
    assert (ROOT / "ros_interfaces/vision_msgs/COLCON_IGNORE").exists()


def _load_installer():
    spec = importlib.util.spec_from_file_location("install_ros_prefix",
                                                  ROOT / "scripts" / "install_ros_prefix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setup_makes_the_venv_a_ros_prefix():
    for path in ("share/ament_index/resource_index/packages/saom_ros", "share/saom_ros/package.xml",
                 "share/saom_ros/launch/segment.launch.py", "share/saom_ros/config/saom.yaml"):
        assert (PREFIX / path).is_file(), f"{PREFIX / path} missing: run make setup"
    for name in EXECUTABLES:
        assert os.access(PREFIX / "lib" / "saom_ros" / name, os.X_OK), name
    # still the editable install: the package runs from the source tree
    import saom_ros.training
    assert Path(saom_ros.training.__file__).resolve().parent == ROOT / "training"


@pytest.mark.parametrize("ament_prefix_path", [None, "/opt/ros/elsewhere"])
def test_ament_index_finds_the_package(ament_prefix_path):
    env = {k: v for k, v in os.environ.items() if k != "AMENT_PREFIX_PATH"}
    if ament_prefix_path:
        env["AMENT_PREFIX_PATH"] = ament_prefix_path
    code = ("import os; from ament_index_python.packages import get_package_prefix, "
            "get_package_share_directory as share; "
            "print(get_package_prefix('saom_ros'), share('saom_ros'), os.environ['AMENT_PREFIX_PATH'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    prefix, share, search = out.stdout.split()
    assert (prefix, share) == (str(PREFIX), str(PREFIX / "share" / "saom_ros"))
    # the venv is the underlay: a workspace on AMENT_PREFIX_PATH comes first
    assert search.split(os.pathsep) == [p for p in (ament_prefix_path, str(PREFIX)) if p]


def test_installer_links_every_file_and_drops_stale_ones(tmp_path):
    installer = _load_installer()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in EXECUTABLES:
        (bin_dir / name).write_text("#!/bin/sh\n")
    stale = tmp_path / "share" / "saom_ros" / "config" / "removed.yaml"
    stale.parent.mkdir(parents=True)
    stale.symlink_to(tmp_path / "gone.yaml")
    for _ in range(2):  # idempotent
        made = installer.install(tmp_path)
    assert not stale.is_symlink()
    assert (tmp_path / "share/saom_ros/config/saom.yaml").resolve() == ROOT / "config" / "saom.yaml"
    assert (tmp_path / "share/saom_ros/launch/segment.launch.py").resolve() == \
        ROOT / "launch" / "segment.launch.py"
    for name in EXECUTABLES:  # console scripts replace the data-file launcher of the same name
        assert (tmp_path / "lib/saom_ros" / name).resolve() == bin_dir / name
    assert all(p.is_symlink() for p in made) and len(made) == len(set(made))
    (pth,) = (tmp_path / "lib").glob("python3*/site-packages/saom_ros_ament_prefix.pth")
    assert pth.read_text() == installer.PTH_LINE
    (bin_dir / "saom-train").unlink()
    with pytest.raises(SystemExit, match="saom-train is missing"):
        installer.install(tmp_path)


def test_installer_help_installs_nothing(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_ros_prefix.py"), "--help"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage:"), out.stdout + out.stderr
    assert not list(tmp_path.iterdir())


def test_ros2_run_executables_run(tmp_path):
    """What ``ros2 run saom_ros <executable>`` starts: saom-train answers, segment_node serves."""
    import rclpy
    from ros_helpers import Listener, camera_image, ros_args, ros_env
    from saom_ros.image_codec import array_to_image

    lib = PREFIX / "lib" / "saom_ros"
    out = subprocess.run([str(lib / "saom-train"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "export" in out.stdout, out.stderr
    env = ros_env()
    log = (tmp_path / "node.log").open("wb")
    node = subprocess.Popen([str(lib / "segment_node"),
                             *ros_args({"device": "cpu"}, {"image": "/packaging/image"}, None)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    rclpy.init(domain_id=int(env["ROS_DOMAIN_ID"]))
    listener = Listener("/packaging/image")
    try:
        assert listener.spin_until(lambda: listener.pub.get_subscription_count() > 0, 120,
                                   _Alive(node)), (tmp_path / "node.log").read_text()
        image, deadline = array_to_image(camera_image(0), "rgb8"), time.monotonic() + 90
        # Sent again every few seconds, as a camera would: a frame published while discovery is
        # still settling on the node's side can be lost (seen once in CI on a loaded machine).
        while not listener.messages("detections") and time.monotonic() < deadline:
            listener.pub.publish(image)
            listener.spin_until(lambda: listener.messages("detections"), 5.0, _Alive(node))
            assert node.poll() is None, (tmp_path / "node.log").read_text()
        assert listener.messages("detections"), (tmp_path / "node.log").read_text()
        assert listener.messages("label_info")
    finally:
        listener.close()
        rclpy.shutdown()
        node.terminate()
        node.wait(timeout=30)
        log.close()


class _Alive:
    """The ``alive()`` that Listener.spin_until asks of a process."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.poll() is None
