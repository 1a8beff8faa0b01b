"""Frame delivery over real DDS (bench/frame_delivery.py's camera and counter): a node with default
parameters receives every 640x480 frame of a reliable camera, counted by its own diagnostics,
and still connects to a best-effort camera."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import rclpy

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 20


def _load_bench():
    spec = importlib.util.spec_from_file_location("frame_delivery",
                                                  ROOT / "bench" / "frame_delivery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _load_bench()


@pytest.fixture(scope="module")
def counter(tmp_path_factory):
    """The node (default parameters, packaged model) and its frames_received counter."""
    rclpy.init(domain_id=int(BENCH.ros_env()["ROS_DOMAIN_ID"]))
    node = BENCH.NodeCounter({}, tmp_path_factory.mktemp("delivery") / "node.log")
    try:
        node.wait_ready()
        yield node
    finally:
        node.close()
        rclpy.shutdown()


def delivered(counter, width: int, height: int, reliability: str, profile=None) -> int:
    before = counter.received()
    BENCH.run_camera(width, height, reliability, FRAMES, 10.0, profile)
    counter.spin(2.0)
    return counter.received() - before


def test_every_frame_of_a_reliable_640x480_camera_arrives(counter):
    # the camera publishes once the node's subscription has the camera's reliability
    assert delivered(counter, 640, 480, "reliable") == FRAMES


def test_a_best_effort_camera_connects(counter):
    """auto switches to best-effort; small frames (one DDS fragment) all arrive."""
    assert delivered(counter, 64, 48, "best_effort") == FRAMES


def test_the_shipped_profile_makes_a_best_effort_640x480_camera_lossless(counter):
    assert BENCH.PROFILE.is_file()
    assert delivered(counter, 640, 480, "best_effort", BENCH.PROFILE) == FRAMES
