"""How many camera frames reach segment_node: delivered/sent by frame size and publisher QoS.

Starts the real node (``saom-segment``, packaged model, default parameters but the ones named
below) and, per row, a separate camera process that publishes N rgb8 frames at a fixed rate;
delivered = the growth of the node's own ``frames_received`` counter (/diagnostics).

    .venv/bin/python bench/frame_delivery.py [--frames 30] [--rate 10] [--sizes 640x480,1280x720]

Rows: camera reliable or best-effort, each without and with the shared-memory profile that ships
with the package (``config/fastdds_large_images.xml``, set on the camera process only).
Loads: ``idle`` (the node runs a 1-point grid: almost no inference) and ``inference`` (the
packaged model's own settings, one CPU core busy with inference while frames arrive).
All processes run on loopback in a private domain (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests load this file by its path
from bench_args import choice_list, frame_sizes, positive_int  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "fastdds_large_images.xml"
# The node parameters of each load (others: the packaged defaults).
LOADS = {"idle": {"points_per_side": "1"}, "inference": {}}
CAMERA = """
import sys, time
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
width, height, reliability, frames, rate = sys.argv[1:6]
width, height, frames, rate = int(width), int(height), int(frames), float(rate)
rclpy.init()
node = rclpy.create_node("bench_camera")
policy = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
pub = node.create_publisher(Image, "/bench_cam/image",
                            QoSProfile(depth=10, reliability=policy[reliability]))
# Steady state, as with a camera that has been running: wait until the node subscribes with the
# reliability it settles on for this camera (input_reliability auto looks once a second).
def settled():
    subs = node.get_subscriptions_info_by_topic("/bench_cam/image")
    return pub.get_subscription_count() > 0 and all(
        s.qos_profile.reliability == policy[reliability] for s in subs)
end = time.monotonic() + 30
while not settled() and time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
time.sleep(1.0)
data = bytes(range(256)) * (width * height * 3 // 256) + bytes(width * height * 3 % 256)
for i in range(frames):
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=data)
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.header.frame_id = "bench"
    pub.publish(msg)
    time.sleep(1.0 / rate)
time.sleep(3.0)  # a reliable writer may still be resending the last fragments
"""


def ros_env() -> dict[str, str]:
    return {**os.environ, "ROS_DOMAIN_ID": str(170 + os.getpid() % 60),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONUNBUFFERED": "1"}


class NodeCounter:
    """The node process and its frames_received counter, read from /diagnostics."""

    def __init__(self, params: dict[str, str], log: Path) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray

        script = Path(sys.executable).parent / "saom-segment"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m",
                                                      "saom_ros.segment_node"]
        cmd += ["--ros-args", "-r", "__ns:=/bench", "-r", "image:=/bench_cam/image"]
        for key, value in params.items():
            cmd += ["-p", f"{key}:={value}"]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(cmd, env=ros_env(), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.rclpy = rclpy
        self.node = rclpy.create_node(f"bench_counter_{os.getpid()}")
        self.values: dict[str, str] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name == "/bench/segment_node":
                self.values = {kv.key: kv.value for kv in status.values}

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.05)

    def received(self) -> int:
        """frames_received after the next report (waits for it)."""
        self.values = {}
        end = time.monotonic() + 10
        while not self.values and time.monotonic() < end:
            self.spin(0.1)
        return int(self.values.get("frames_received", -1))

    def wait_ready(self, timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while self.values.get("lifecycle_state") != "active":
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError("the node did not become active; see its log")
            self.spin(0.2)

    def close(self) -> None:
        self.proc.send_signal(2)
        self.proc.wait(timeout=30)
        self.node.destroy_node()
        self._log.close()


def run_camera(width: int, height: int, reliability: str, frames: int, rate: float,
               profile: Optional[Path]) -> None:
    env = ros_env()
    if profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    subprocess.run([sys.executable, "-c", CAMERA, str(width), str(height), reliability,
                    str(frames), str(rate)], env=env, check=True, timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=positive_int, default=30)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--sizes", type=frame_sizes, default="640x480,1280x720")
    parser.add_argument("--loads", type=choice_list(list(LOADS)), default="idle,inference")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="keep the node's logs here (default: a temporary folder, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        _run(args, args.log_dir or Path(scratch))


def _run(args: argparse.Namespace, log_dir: Path) -> None:
    os.environ.update(ros_env())
    import rclpy
    rclpy.init()
    cameras = [(reliability, profile) for reliability in ("reliable", "best_effort")
               for profile in (None, PROFILE)]
    print(f"{args.frames} frames at {args.rate:g} Hz per row; node parameters: defaults "
          "(idle: points_per_side 1)")
    print("| camera QoS | camera profile | frame | node load | delivered |")
    print("|---|---|---|---|---|")
    for load in args.loads:
        counter = NodeCounter(LOADS[load], log_dir / f"frame_delivery_{load}.log")
        try:
            counter.wait_ready()
            for width, height in args.sizes:
                for reliability, profile in cameras:
                    before = counter.received()
                    run_camera(width, height, reliability, args.frames, args.rate, profile)
                    counter.spin(2.0)
                    delivered = counter.received() - before
                    print(f"| {reliability} | {profile.name if profile else 'default'} | "
                          f"{width}x{height} | {load} | {delivered}/{args.frames} |", flush=True)
        finally:
            counter.close()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
