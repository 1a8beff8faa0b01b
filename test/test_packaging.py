"""The installed layout that colcon, `ros2 run` and `ros2 launch` rely on, read from a built wheel."""
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    for script in ("segment_node = saom_ros.segment_node:main", "saom-segment = saom_ros.segment_node:main",
                   "saom-train = saom_ros.training.cli:main"):
        assert script in text


def test_package_xml_is_format_3_with_runtime_dependencies():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "saom_ros"
    deps = {e.text for e in root if e.tag in ("depend", "exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "vision_msgs", "diagnostic_msgs", "launch_ros"} <= deps
    assert root.find("export/build_type").text == "ament_python"


def test_fallback_vision_msgs_is_hidden_from_colcon():
    assert (ROOT / "ros_interfaces/vision_msgs/COLCON_IGNORE").exists()
