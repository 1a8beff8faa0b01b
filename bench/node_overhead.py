"""segment_node's per-frame cost outside the model, and its end-to-end latency with a small model.

Part 1 (in process, no model): a 640x480 bgr8 Image and an everything-mode result with 50
instances; times image conversion, post-processing + message building, and publishing the three
outputs to a subscriber process, as the node's worker does for every frame (the optional overlay
is timed separately).
Part 2 (--e2e): the real node process (saom-segment) with a tiny checkpoint written here; times
image published -> Detection2DArray received, one frame at a time, and reads the node's own
inference time from /diagnostics, so the difference is the node's overhead including DDS. Its
input is reliable by default: a best-effort 900 kB image can lose a fragment on a loaded machine,
which a camera stream shrugs off but a one-frame-at-a-time measurement cannot.

    .venv/bin/python bench/node_overhead.py [--frames 200] [--e2e] [--e2e-frames 10]
        [--points-per-side 8] [--input-reliability reliable|best_effort]

The last line is overhead_ms=<median per-frame overhead of part 1>.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from bench_args import positive_int
from saom_ros import image_codec, messages
from saom_ros.classes import SAOM_CLASSES
from saom_ros.everything import Instances

ROOT = Path(__file__).resolve().parents[1]
# The subscriber stops at SIGTERM between two spins: under rclpy's own signal handler a signal
# that arrives while a message is being taken ends the process with a RuntimeError traceback.
SINK = """
import signal
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
node = rclpy.create_node("node_overhead_sink")
qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
for msg_type, topic in ((Detection2DArray, "detections"), (Image, "instances"),
                        (Image, "semantic")):
    node.create_subscription(msg_type, "bench/" + topic, lambda m: None, qos)
while not stop:
    rclpy.spin_once(node, timeout_sec=0.1)
node.destroy_node()
rclpy.shutdown()
"""
H, W, N = 480, 640, 50


def synthetic_instances(rng: np.random.Generator) -> Instances:
    """50 overlapping elliptical instances, composed the way the engine composes them."""
    yy, xx = np.mgrid[:H, :W]
    masks = np.zeros((N, H, W), bool)
    for i in range(N):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(10, 80), rng.uniform(10, 80)
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    class_ids = rng.integers(1, len(SAOM_CLASSES) + 1, N).astype(np.int32)
    instance_image = np.zeros((H, W), np.uint16)
    semantic_image = np.zeros((H, W), np.uint16)
    for i in reversed(range(N)):  # best-scoring (first) mask wins its pixels
        instance_image[masks[i]] = i + 1
        semantic_image[masks[i]] = class_ids[i]
    boxes = np.zeros((N, 4), np.float32)
    return Instances(masks=masks, boxes=boxes,
                     predicted_iou=np.sort(rng.random(N, np.float32))[::-1],
                     stability_score=np.ones(N, np.float32), class_ids=class_ids,
                     class_scores=rng.random(N, np.float32), instance_image=instance_image,
                     semantic_image=semantic_image)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def overhead(frames: int) -> float:
    """Median per-frame node overhead (ms) outside the model; prints each stage."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    msg = image_codec.array_to_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8",
                                     Header(frame_id="camera"))
    instances = synthetic_instances(rng)

    node = rclpy.create_node("node_overhead_bench")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    det_pub = node.create_publisher(Detection2DArray, "bench/detections", qos)
    inst_pub = node.create_publisher(Image, "bench/instances", qos)
    sem_pub = node.create_publisher(Image, "bench/semantic", qos)
    # The subscriber is another process, as downstream nodes are: DDS really delivers every frame.
    sink = subprocess.Popen([sys.executable, "-c", SINK])
    deadline = time.monotonic() + 60
    while min(p.get_subscription_count() for p in (det_pub, inst_pub, sem_pub)) == 0 \
            and time.monotonic() < deadline:
        time.sleep(0.05)

    stages: dict[str, list[float]] = {"convert": [], "build": [], "publish": [], "total": [],
                                      "overlay": []}  # publish_overlay only; not in the total
    detections = None
    for i in range(frames + 5):
        t0 = time.perf_counter()
        image_codec.image_to_rgb(msg)
        t1 = time.perf_counter()
        detections = messages.detections(instances, msg.header)
        inst = messages.label_image(instances.instance_image, msg.header)
        sem = messages.semantic_image(instances.semantic_image, msg.header)
        t2 = time.perf_counter()
        det_pub.publish(detections)
        inst_pub.publish(inst)
        sem_pub.publish(sem)
        t3 = time.perf_counter()
        t4 = time.perf_counter()
        image_codec.array_to_image(messages.overlay(rgb, instances, SAOM_CLASSES), "rgb8",
                                   msg.header)
        t5 = time.perf_counter()
        if i >= 5:  # warm-up
            for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0, t5 - t4)):
                stages[key].append(dt)
    sink.terminate()
    sink.wait(timeout=30)
    node.destroy_node()
    print(f"part 1: {W}x{H} bgr8 -> rgb, {N} instances ({len(detections.detections)} own pixels), "
          f"{frames} frames, image conversion backend {image_codec.backend()}, published to a "
          "subscriber process")
    for key, samples in stages.items():
        print(f"  {key:8s} median {median_ms(samples):7.2f} ms   p90 "
              f"{np.percentile(samples, 90) * 1e3:7.2f} ms")
    return median_ms(stages["total"])


def end_to_end(frames: int, points_per_side: int, reliability: str) -> None:
    """Image published -> detections received through the real node process with a tiny model."""
    import torch

    from saom_ros.model import ModelConfig, build_saom, save_checkpoint
    tmp = Path(tempfile.mkdtemp(prefix="saom_bench_"))
    torch.manual_seed(0)
    ckpt = tmp / "tiny.pt"
    save_checkpoint(ckpt, build_saom(ModelConfig.preset("tiny", len(SAOM_CLASSES)), SAOM_CLASSES))
    script = Path(sys.executable).parent / "saom-segment"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "saom_ros.segment_node"]
    cmd += ["--ros-args", "--params-file", str(ROOT / "config" / "saom.yaml"),
            "-p", f"checkpoint:={ckpt}", "-p", f"points_per_side:={points_per_side}",
            "-p", "device:=cpu", "-p", f"input_reliability:={reliability}",
            "-r", "image:=/bench/image", "-r", "__ns:=/bench"]
    log = (tmp / "node.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    node = rclpy.create_node("node_overhead_e2e")
    pub = node.create_publisher(Image, "/bench/image", 10)
    arrivals: dict[int, float] = {}
    inference: list[float] = []
    node.create_subscription(
        Detection2DArray, "/bench/segment_node/detections",
        lambda m: arrivals.setdefault(m.header.stamp.sec, time.perf_counter()), 10)

    def on_diag(msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name == "/bench/segment_node":
                value = {kv.key: kv.value for kv in s.values}["inference_ms"]
                if value != "nan":
                    inference.append(float(value))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    try:
        deadline = time.monotonic() + 120
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
        latencies, lost = [], 0
        for i in range(frames + 2):
            header = Header(frame_id="camera")
            header.stamp.sec = i + 1
            sent = time.perf_counter()
            pub.publish(image_codec.array_to_image(rgb, "rgb8", header))
            end = time.monotonic() + 30
            while i + 1 not in arrivals and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.01)
            if i >= 2:  # the first frames warm the model up
                if i + 1 in arrivals:
                    latencies.append(arrivals[i + 1] - sent)
                else:
                    lost += 1
        for _ in range(30):  # one more diagnostics report
            rclpy.spin_once(node, timeout_sec=0.05)
        print(f"part 2: node process, tiny model on cpu, points_per_side {points_per_side}, "
              f"{W}x{H} rgb8, input {reliability}, {len(latencies)} frames one at a time, "
              f"{lost} unanswered within 30 s")
        if latencies:
            print(f"  image -> detections median {median_ms(latencies):8.1f} ms")
        if inference:
            print(f"  node inference_ms (diagnostics, median of reports) "
                  f"{statistics.median(inference):8.1f} ms")
    finally:
        node.destroy_node()
        proc.send_signal(2)
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)  # the checkpoint and the node's log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=positive_int, default=200)
    parser.add_argument("--e2e", action="store_true", help="also time the real node end to end")
    parser.add_argument("--e2e-frames", type=positive_int, default=10)
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--input-reliability", default="reliable",  # one-shot frames: no loss
                        choices=("best_effort", "reliable"))
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    rclpy.init()
    try:
        if args.e2e:
            end_to_end(args.e2e_frames, args.points_per_side, args.input_reliability)
        result = overhead(args.frames)
    finally:
        rclpy.shutdown()
    print(f"overhead_ms={result:.2f}")


if __name__ == "__main__":
    main()
