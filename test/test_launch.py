"""launch/segment.launch.py: every node parameter is a launch argument, given ones override.

launch and launch_ros have no wheels, so the real launch file runs here against stand-ins that
record what it asks launch_ros for; the node is then started with exactly those arguments (as
launch_ros starts it) and asked over DDS which values it took.
"""
from __future__ import annotations

import ast
import sys
import time
import types
from typing import Any

import pytest
import rclpy
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import Parameter, parameter_value_to_python

from ros_domain import unique_domain_id
from ros_helpers import PARAMS_FILE, ROOT, NodeProcess
from saom_ros import node_parameters
from saom_ros.node_parameters import launch_value, parameter_table

LAUNCH_FILE = ROOT / "launch" / "segment.launch.py"
FIXED = {"image", "depth", "camera_info", "params_file", "namespace"}


def test_launch_file_uses_launch_ros_and_the_parameter_table():
    tree = ast.parse(LAUNCH_FILE.read_text())
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {"Node", "DeclareLaunchArgument", "LaunchConfiguration", "FindPackageShare",
            "parameter_table"} <= imports


def run_launch(monkeypatch, values: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the launch file on stand-in launch modules with these argument values; returns
    (declared argument -> (default, description), the Node action's keyword arguments)."""
    class Recorded:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    modules = {
        "launch": {"LaunchDescription": Recorded},
        "launch.actions": {"DeclareLaunchArgument": Recorded, "OpaqueFunction": Recorded},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration,
                                 "PathJoinSubstitution": Recorded},
        "launch_ros.actions": {"Node": Recorded},
        "launch_ros.substitutions": {"FindPackageShare": Recorded},
    }
    for name, attrs in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    monkeypatch.setitem(sys.modules, "launch_ros", types.SimpleNamespace())
    namespace: dict = {}
    exec(compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec"), namespace)
    (entries,) = namespace["generate_launch_description"]().args
    declared = {e.args[0]: (e.kwargs["default_value"], e.kwargs["description"])
                for e in entries if "default_value" in e.kwargs}
    (opaque,) = [e for e in entries if "function" in e.kwargs]
    context = {name: values.get(name, default if isinstance(default, str) else "<share>/saom.yaml")
               for name, (default, _) in declared.items()}
    (node,) = opaque.kwargs["function"](context)
    return declared, node.kwargs


def as_ros_args(node_kwargs: dict[str, Any]) -> list[str]:
    """What launch_ros passes to the executable for these Node arguments."""
    params_file, overrides = node_kwargs["parameters"]
    args = ["--ros-args", "--params-file", params_file]
    for key, value in overrides.items():
        args += ["-p", f"{key}:={str(value).lower() if isinstance(value, bool) else value}"]
    for src, dst in node_kwargs["remappings"]:
        args += ["-r", f"{src}:={dst}"]
    if node_kwargs["namespace"]:  # launch_ros makes it absolute
        args += ["-r", f"__ns:=/{node_kwargs['namespace'].lstrip('/')}"]
    return args


def test_every_node_parameter_is_a_launch_argument_that_defaults_to_the_params_file(monkeypatch):
    declared, node = run_launch(monkeypatch, {})
    names = [name for name, _, _ in parameter_table()]
    assert set(declared) == FIXED | set(names)
    for name in names:
        default, description = declared[name]
        assert default == "" and "params file" in description and len(description) > 30, name
    assert (node["package"], node["executable"], node["name"]) == ("saom_ros", "segment_node",
                                                                   "segment_node")
    assert node["parameters"] == ["<share>/saom.yaml", {}]  # nothing given, nothing overridden
    assert node["remappings"] == [("image", "image"), ("depth", "depth"),
                                  ("camera_info", "camera_info")]
    assert node["namespace"] == ""


def test_given_arguments_override_with_the_parameter_type(monkeypatch):
    _, node = run_launch(monkeypatch, {
        "image": "/camera/color/image_raw", "depth": "/camera/aligned_depth_to_color/image_raw",
        "camera_info": "/camera/color/camera_info", "namespace": "robot1", "pred_iou_thresh": "0.5",
        "points_per_side": "8", "use_compressed": "True", "checkpoint": "/models/sam.pth",
        "max_instances": "", "params_file": str(PARAMS_FILE)})
    params_file, overrides = node["parameters"]
    assert params_file == str(PARAMS_FILE)
    assert overrides == {"pred_iou_thresh": 0.5, "points_per_side": 8, "use_compressed": True,
                         "checkpoint": "/models/sam.pth"}
    assert type(overrides["pred_iou_thresh"]) is float and type(overrides["points_per_side"]) is int
    assert node["remappings"] == [("image", "/camera/color/image_raw"),
                                  ("depth", "/camera/aligned_depth_to_color/image_raw"),
                                  ("camera_info", "/camera/color/camera_info")]
    assert node["namespace"] == "robot1"


def test_a_value_of_the_wrong_type_is_an_error_naming_the_argument(monkeypatch):
    with pytest.raises(ValueError, match="points_per_side:='many' must be of type int"):
        run_launch(monkeypatch, {"points_per_side": "many"})
    with pytest.raises(ValueError,
                       match=r"autostart:='maybe' must be of type bool \(true or false\)"):
        run_launch(monkeypatch, {"autostart": "maybe"})
    assert launch_value("pred_iou_thresh", "1", Parameter.Type.DOUBLE) == 1.0


def test_a_parameter_added_to_the_table_is_a_launch_argument_without_editing_the_file(
        monkeypatch):
    table = parameter_table()
    monkeypatch.setattr(node_parameters, "parameter_table",
                        lambda: table + [("new_knob", 3, table[0][2])])
    declared, node = run_launch(monkeypatch, {"new_knob": "4"})
    assert "new_knob" in declared
    assert node["parameters"][1] == {"new_knob": 4}


def test_the_node_takes_the_values_given_to_launch(monkeypatch, tmp_path):
    """Over DDS: the node started with the launch file's arguments reports the launch values,
    and the params file's for the rest."""
    _, node = run_launch(monkeypatch, {"pred_iou_thresh": "0.5", "points_per_side": "4",
                                       "namespace": "launched", "params_file": str(PARAMS_FILE)})
    proc = NodeProcess(tmp_path, {}, {}, params_file=None, extra_args=as_ros_args(node)[1:])
    rclpy.init(domain_id=unique_domain_id())
    client_node = rclpy.create_node("launch_test_client")
    try:
        client = client_node.create_client(GetParameters, "/launched/segment_node/get_parameters")
        for _ in range(120):
            if client.wait_for_service(timeout_sec=1.0) or not proc.alive():
                break
        assert client.service_is_ready(), proc.output
        names = ["pred_iou_thresh", "points_per_side", "input_reliability", "publish_overlay"]
        values: list = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # FROM_CHECKPOINT values appear once configure ran
            future = client.call_async(GetParameters.Request(names=names))
            rclpy.spin_until_future_complete(client_node, future, timeout_sec=10)
            if not future.done():  # DDS can lose a request or reply while it matches: ask again
                client.remove_pending_request(future)
                continue
            values = [parameter_value_to_python(v) for v in future.result().values]
            if values[0] is not None:
                break
            rclpy.spin_once(client_node, timeout_sec=1.0)
        assert values == [0.5, 4, "auto", False], proc.output
    finally:
        client_node.destroy_node()
        rclpy.shutdown()
        proc.stop()
