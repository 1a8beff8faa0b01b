"""Helpers for tests that talk to segment_node over real DDS: the node process and a listener."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from ros_domain import unique_domain_id

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = ROOT / "config" / "saom.yaml"
NODE_NS = "/segment_node"
# A fast, untrained-model-friendly configuration: small grid, every mask kept.
FAST_ENGINE = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
               "box_nms_thresh": 1.0}


def ros_env() -> dict[str, str]:
    """This process's environment on a private, local-only ROS domain."""
    return {**os.environ, "ROS_DOMAIN_ID": str(unique_domain_id()),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONUNBUFFERED": "1"}


def node_command() -> list[str]:
    """``saom-segment`` where it is installed, else the same entry point through ``-m``."""
    script = Path(sys.executable).parent / "saom-segment"
    return [str(script)] if script.exists() else [sys.executable, "-m", "saom_ros.node_main"]


def ros_args(params: dict[str, Any], remaps: dict[str, str],
             params_file: Optional[Path] = PARAMS_FILE) -> list[str]:
    """``--ros-args --params-file config/saom.yaml -p k:=v ... -r a:=b ...``"""
    args = ["--ros-args"] + (["--params-file", str(params_file)] if params_file else [])
    for key, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-p", f"{key}:={text}"]
    for src, dst in remaps.items():
        args += ["-r", f"{src}:={dst}"]
    return args


class NodeProcess:
    """segment_node as a separate process; its combined output goes to a file (no pipe stalls)."""

    def __init__(self, tmp: Path, params: dict[str, Any], remaps: dict[str, str],
                 params_file: Optional[Path] = PARAMS_FILE,
                 extra_args: Optional[list[str]] = None) -> None:
        """``extra_args``: more command-line arguments, after those made of the others."""
        self.log_path = tmp / f"segment_node_{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        args = ros_args(params, remaps, params_file) + (extra_args or [])
        self.proc = subprocess.Popen(node_command() + args, cwd=ROOT,
                                     env=ros_env(), stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def run_node(params: dict[str, Any], command: Optional[list[str]] = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the node to completion (for start-up failures), output captured as text."""
    return subprocess.run((command or node_command()) + ros_args(params, {}), cwd=ROOT,
                          env=ros_env(), capture_output=True, text=True, timeout=timeout)


class Listener:
    """A test-side node: publishes camera images, records the segment_node outputs it receives."""

    def __init__(self, image_topic: str, compressed: bool = False, node: str = NODE_NS) -> None:
        self.node: Node = rclpy.create_node(f"saom_test_{os.getpid()}_{time.monotonic_ns()}")
        self.node_name = node
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(CompressedImage if compressed else Image,
                                              image_topic, 10)
        self.received: dict[str, list[tuple[float, Any]]] = {
            "detections": [], "instances": [], "semantic": [], "overlay": [], "label_info": [],
            "diagnostics": []}

        def keep(name: str) -> Callable[[Any], None]:
            return lambda msg: self.received[name].append((time.time(), msg))

        sub = self.node.create_subscription
        sub(Detection2DArray, f"{node}/detections", keep("detections"), qos)
        sub(Image, f"{node}/instances", keep("instances"), qos)
        sub(Image, f"{node}/semantic", keep("semantic"), qos)
        sub(Image, f"{node}/overlay", keep("overlay"), qos)
        sub(DiagnosticArray, "/diagnostics", keep("diagnostics"), qos)
        sub(LabelInfo, f"{node}/label_info", keep("label_info"), QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))

    def messages(self, name: str) -> list[Any]:
        return [m for _, m in self.received[name]]

    def spin_until(self, done: Callable[[], bool], timeout: float,
                   process: Optional[NodeProcess] = None) -> bool:
        """Spin until ``done()``; False on timeout or if ``process`` died."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if done():
                return True
            if process is not None and not process.alive():
                return False
        return False

    def wait_for_subscriber(self, timeout: float, process: NodeProcess) -> bool:
        return self.spin_until(lambda: self.pub.get_subscription_count() > 0, timeout, process)

    def by_stamp(self, name: str, stamp: Any) -> list[Any]:
        return [m for m in self.messages(name) if m.header.stamp == stamp]

    def diagnostics_values(self) -> dict[str, str]:
        """The latest segment_node status from /diagnostics, as a key -> value dict."""
        for msg in reversed(self.messages("diagnostics")):
            for status in msg.status:
                if status.name == self.node_name:
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def close(self) -> None:
        self.node.destroy_node()


def camera_image(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A blocky RGB image (random coloured rectangles) so masks have structure."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    for _ in range(6):
        y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        img[y0:y0 + rng.integers(4, height // 2), x0:x0 + rng.integers(4, width // 2)] = \
            rng.integers(0, 256, 3)
    return img
