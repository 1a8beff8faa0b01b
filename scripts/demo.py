#!/usr/bin/env python3
"""`make demo`: the embedded SAOM-small model segmenting bundled synthetic frames over DDS.

Starts segment_node (``saom-segment``) on saom_ros/data/saom_small.pt in its own process on a
private ROS domain, plays saom_ros/data/demo_frames/*.png to it one frame at a time, and saves
what comes back: demo_output/frame_XXX_overlay.png (the node's ~/overlay) and
demo_output/summary.json (per frame: detections with class names, scores, boxes, and the
round-trip latency from publishing the image to receiving its detections). Then a real-image
smoke run: a few of scikit-image's sample photographs go through the same node
(demo_output/real_<name>.png); no quality is claimed for them.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "saom_ros" / "data"
REAL_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
# Longest side of the real images as sent: the model sees 256 px anyway, and frames much larger
# than ~300 KB did not reach the node's best-effort subscription here (see the node's
# input_reliability parameter).
REAL_SIZE = 320
NODE = "saom_demo"


def ros_environment() -> dict[str, str]:
    """A private, local-only ROS domain, so the demo never meets other ROS processes."""
    domain = os.environ.get("SAOM_DEMO_DOMAIN_ID", str(150 + os.getpid() % 80))
    return {**os.environ, "ROS_DOMAIN_ID": domain, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "PYTHONUNBUFFERED": "1"}


def node_command(checkpoint: Path) -> list[str]:
    """``saom-segment --ros-args ...`` (the console script beside this Python, else ``-m``).

    No engine parameters: the node runs with the everything-mode settings the checkpoint carries.
    """
    script = Path(sys.executable).parent / "saom-segment"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "saom_ros.node_main"]
    return cmd + ["--ros-args", "-r", f"__node:={NODE}", "-r", f"image:=/{NODE}/camera/image",
                  "-p", f"checkpoint:={checkpoint}", "-p", "publish_overlay:=true",
                  "-p", "device:=cpu"]


class DemoClient:
    """Publishes frames to the node and collects its detections and overlays by header stamp."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray, LabelInfo

        rclpy.init()
        self.rclpy = rclpy
        self.node = Node("saom_demo_player")
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(Image, f"/{NODE}/camera/image", reliable)
        self.detections: dict[tuple[int, int], object] = {}
        self.overlays: dict[tuple[int, int], object] = {}
        self.received_at: dict[tuple[int, int], float] = {}
        self.label_info: Optional[LabelInfo] = None
        self.node.create_subscription(Detection2DArray, f"/{NODE}/detections", self._on_det,
                                      reliable)
        self.node.create_subscription(Image, f"/{NODE}/overlay", self._on_overlay, reliable)
        self.node.create_subscription(
            LabelInfo, f"/{NODE}/label_info", self._on_label_info,
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL))

    @staticmethod
    def _key(msg) -> tuple[int, int]:
        return msg.header.stamp.sec, msg.header.stamp.nanosec

    def _on_det(self, msg) -> None:
        self.detections[self._key(msg)] = msg
        self.received_at.setdefault(self._key(msg), time.monotonic())

    def _on_overlay(self, msg) -> None:
        self.overlays[self._key(msg)] = msg

    def _on_label_info(self, msg) -> None:
        self.label_info = msg

    def spin_until(self, done, timeout: float, alive) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if done():
                return True
            if not alive():
                raise RuntimeError("segment_node exited")
            self.rclpy.spin_once(self.node, timeout_sec=0.05)
        return done()

    def wait_ready(self, alive, timeout: float = 60.0) -> None:
        """Until the node's LabelInfo arrived and it subscribes to our image topic."""
        if not self.spin_until(lambda: self.label_info is not None
                               and self.pub.get_subscription_count() > 0, timeout, alive):
            raise RuntimeError(f"segment_node was not ready after {timeout:.0f} s")

    def segment(self, rgb: np.ndarray, frame_id: str, alive, timeout: float = 60.0) -> dict:
        """Publish one frame; wait for its detections and overlay; the round trip in ms."""
        from saom_ros.image_codec import array_to_image, image_to_rgb
        from std_msgs.msg import Header

        header = Header(frame_id=frame_id, stamp=self.node.get_clock().now().to_msg())
        key = (header.stamp.sec, header.stamp.nanosec)
        sent = time.monotonic()
        self.pub.publish(array_to_image(np.ascontiguousarray(rgb), "rgb8", header))
        if not self.spin_until(lambda: key in self.detections and key in self.overlays,
                               timeout, alive):
            raise RuntimeError(f"no result for {frame_id} within {timeout:.0f} s")
        return {"latency_ms": round((self.received_at[key] - sent) * 1e3, 1),
                "detections": self.detections.pop(key),
                "overlay": image_to_rgb(self.overlays.pop(key))}

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def describe(detections, class_names: dict[int, str]) -> list[dict]:
    """Detections as plain JSON: class, score, box (x0, y0, x1, y1 pixel-inclusive), instance id."""
    out = []
    for det in detections.detections:
        hyp = det.results[0].hypothesis
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        w, h = det.bbox.size_x, det.bbox.size_y
        out.append({"instance_id": int(det.id), "class_id": int(hyp.class_id),
                    "class_name": class_names.get(int(hyp.class_id), "?"),
                    "score": round(float(hyp.score), 3),
                    "box_xyxy": [round(cx - (w - 1) / 2, 1), round(cy - (h - 1) / 2, 1),
                                 round(cx + (w - 1) / 2, 1), round(cy + (h - 1) / 2, 1)]})
    return out


def real_images(longest_side: int = REAL_SIZE) -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled sample photographs (no download), RGB uint8, longest side
    ``longest_side`` (the model sees 256 px anyway)."""
    from skimage import data
    images = []
    for name in REAL_IMAGES:
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        scale = longest_side / max(image.shape[:2])
        image = cv2.resize(image[..., :3], (round(image.shape[1] * scale),
                                            round(image.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
        images.append((name, np.ascontiguousarray(image.astype(np.uint8))))
    return images


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def run(checkpoint: Path, frames_dir: Path, out_dir: Path, with_real: bool = True) -> dict:
    """The whole demo; returns (and writes) the summary."""
    start = time.monotonic()
    frames = sorted(frames_dir.glob("*.png"))
    if not checkpoint.is_file():
        raise SystemExit(f"demo: checkpoint {checkpoint} does not exist (see docs/results.md: "
                         "scripts/reproduce_results.py writes it)")
    if not frames:
        raise SystemExit(f"demo: no frames (*.png) in {frames_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("frame_*_overlay.png")) + list(out_dir.glob("real_*.png")):
        old.unlink()
    env = ros_environment()
    os.environ.update(env)  # this process joins the same private domain
    log_path = out_dir / "segment_node.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(node_command(checkpoint), cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    from saom_ros.model import load_model  # while the node starts
    carried = load_model(checkpoint).everything
    alive = lambda: proc.poll() is None  # noqa: E731
    client = None
    try:
        client = DemoClient()
        client.wait_ready(alive)
        class_names = {c.class_id: c.class_name for c in client.label_info.class_map}
        print(f"demo: segment_node up ({len(class_names) - 1} classes) after "
              f"{time.monotonic() - start:.1f} s; ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}")
        summary = {"checkpoint": str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT)
                                     else checkpoint),
                   "everything_settings": carried, "frames": [], "real_images": []}
        for i, path in enumerate(frames):
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            result = client.segment(rgb, path.stem, alive)
            overlay = out_dir / f"frame_{i:03d}_overlay.png"
            save_rgb(overlay, result["overlay"])
            dets = describe(result["detections"], class_names)
            summary["frames"].append({"frame": path.name, "overlay": overlay.name,
                                      "latency_ms": result["latency_ms"], "detections": dets})
            print(f"demo: {path.name}: {len(dets)} objects "
                  f"({', '.join(d['class_name'] for d in dets)}) in {result['latency_ms']:.0f} ms")
        for name, rgb in real_images() if with_real else []:
            result = client.segment(rgb, f"real_{name}", alive)
            overlay = out_dir / f"real_{name}.png"
            save_rgb(overlay, result["overlay"])
            dets = describe(result["detections"], class_names)
            summary["real_images"].append({"image": f"skimage.data.{name}",
                                           "overlay": overlay.name,
                                           "latency_ms": result["latency_ms"], "detections": dets})
            print(f"demo: real image {name} {rgb.shape[1]}x{rgb.shape[0]}: {len(dets)} regions in "
                  f"{result['latency_ms']:.0f} ms (smoke run, no quality claim)")
        latencies = [f["latency_ms"] for f in summary["frames"]]
        summary["median_latency_ms"] = float(np.median(latencies))
        summary["total_s"] = round(time.monotonic() - start, 1)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"demo: {len(frames)} frames, median latency {summary['median_latency_ms']:.0f} ms, "
              f"total {summary['total_s']:.1f} s; overlays and summary.json in {out_dir}")
        return summary
    except RuntimeError as err:
        raise SystemExit(f"demo: {err}; node log: {log_path}\n{log_path.read_text()[-2000:]}")
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DATA / "saom_small.pt")
    parser.add_argument("--frames", type=Path, default=DATA / "demo_frames")
    parser.add_argument("--out", type=Path, default=ROOT / "demo_output")
    parser.add_argument("--no-real", action="store_true", help="skip the real-image smoke run")
    args = parser.parse_args(argv)
    run(args.checkpoint.resolve(), args.frames, args.out, not args.no_real)
    return 0


if __name__ == "__main__":
    sys.exit(main())
