"""What use_depth and track add to segment_node's per-frame cost (no model), 640x480, 50 instances.

The scene of bench/node_overhead.py (50 overlapping ellipses) moves 2 px right per frame; its depth
is a 16UC1 image (mm) with each instance on its own noisy plane, flying pixels along the instance
borders and 5% of pixels invalid. Per frame this times what the node's worker does on top of the
2D outputs: tracking (update + the track-id instance image, published instead of the index
image), depth decoding (message -> registered array as stored), the robust 3D boxes, building
~/detections_3d (serialized, as the node publishes it) and publishing it to a subscriber process.
The 2D post-processing of node_overhead.py (detections and two label images) is timed in the
same loop as the baseline; ~/points (optional: boxes with their points kept, and the
PointCloud2) is timed apart and not in the total. Times are this thread's CPU time
(time.thread_time), not wall time: on a machine shared with other jobs, wall time mostly measures
waiting for a core.

    .venv/bin/python bench/depth_tracking_overhead.py [--frames 200]

The last line is added_ms=<median per-frame time added by depth + tracking>.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray

from saom_ros import image_codec, messages, messages_3d
from saom_ros.depth import boxes_3d
from saom_ros.tracking import Tracker, track_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_args import positive_int  # noqa: E402
from node_overhead import H, N, W, synthetic_instances  # noqa: E402  (the same scene)

SINK = """
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from vision_msgs.msg import Detection3DArray
rclpy.init()
node = rclpy.create_node("depth_tracking_sink")
qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
node.create_subscription(Detection3DArray, "bench/detections_3d", lambda m: None, qos)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
"""
SHIFT_PX = 2


def scene_depth(instance_image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint16 mm: instance i on a plane at 0.8 + 0.06 i m (+-5 mm noise), background at 4 m,
    flying pixels (half-way depths) on instance borders, 5% of pixels 0 (invalid)."""
    plane_mm = np.concatenate(([4000.0], 800.0 + 60.0 * np.arange(N)))
    depth = plane_mm[instance_image] + rng.normal(0, 5, instance_image.shape)
    border = np.zeros(instance_image.shape, bool)
    border[:, 1:] |= instance_image[:, 1:] != instance_image[:, :-1]
    border[1:, :] |= instance_image[1:, :] != instance_image[:-1, :]
    depth[border] = (depth[border] + 4000.0) / 2
    depth[rng.random(instance_image.shape) < 0.05] = 0
    return depth.astype(np.uint16)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=positive_int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    base = synthetic_instances(rng)
    header = Header(frame_id="camera")
    info = CameraInfo(height=H, width=W, k=[525.0, 0, 319.5, 0, 525.0, 239.5, 0, 0, 1])
    # A few distinct frames, cycled: the scene moving SHIFT_PX to the right per frame.
    frames = []
    for k in range(8):
        instances = dataclasses.replace(
            base, instance_image=np.roll(base.instance_image, SHIFT_PX * k, axis=1),
            semantic_image=np.roll(base.semantic_image, SHIFT_PX * k, axis=1))
        depth_msg = image_codec.array_to_image(scene_depth(instances.instance_image, rng),
                                               "16UC1", header)
        frames.append((instances, depth_msg))

    rclpy.init()
    node = rclpy.create_node("depth_tracking_bench")
    pub = node.create_publisher(Detection3DArray, "bench/detections_3d",
                                QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    sink = subprocess.Popen([sys.executable, "-c", SINK])
    deadline = time.monotonic() + 60
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)

    tracker = Tracker()
    stages: dict[str, list[float]] = {k: [] for k in (
        "2d_baseline", "track", "depth_decode", "boxes_3d", "build_3d", "publish_3d", "added",
        "points")}
    boxes = None
    warmup = 5
    try:
        for i in range(args.frames + warmup):
            # Cycling back to frame 0 is a jump of 14 px: the tracker keeps most ids anyway.
            instances, depth_msg = frames[i % len(frames)]
            t0 = time.thread_time()
            messages.detections(instances, header)
            messages.label_image(instances.instance_image, header)
            messages.label_image(instances.semantic_image, header)
            t1 = time.thread_time()
            ids = tracker.update(instances)
            track_image(instances.instance_image, ids)  # published instead of the index image
            t2 = time.thread_time()
            depth = messages_3d.depth_image(depth_msg, (H, W))
            intrinsics = messages_3d.intrinsics(info, (H, W))
            t3 = time.thread_time()
            boxes = boxes_3d(instances.instance_image, depth, intrinsics,
                             encoding=depth_msg.encoding)
            t4 = time.thread_time()
            msg = messages_3d.serialized_detections_3d(boxes, ids, instances, header)
            t5 = time.thread_time()
            pub.publish(msg)
            t6 = time.thread_time()
            messages_3d.point_cloud(boxes_3d(instances.instance_image, depth, intrinsics,
                                             with_points=True, encoding=depth_msg.encoding),
                                    ids, instances, header)
            t7 = time.thread_time()
            rclpy.spin_once(node, timeout_sec=0)
            if i < warmup:
                continue
            for name, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5,
                                            t6 - t1, t7 - t6)):
                stages[name].append(value)
    finally:
        sink.terminate()
        try:
            sink.wait(timeout=10)
        except subprocess.TimeoutExpired:  # seen on a loaded machine: do not lose the results
            sink.kill()
            sink.wait()
        node.destroy_node()
        rclpy.shutdown()

    print(f"{args.frames} frames, {W}x{H}, {N} instances ({len(boxes)} with depth), median "
          "CPU ms per frame:")
    for name, samples in stages.items():
        print(f"  {name:12s} {median_ms(samples):7.2f} ms")
    added = median_ms(stages["added"])
    print(f"added/2d_baseline = {added / median_ms(stages['2d_baseline']):.2f}")
    print(f"added_ms={added:.2f}")


if __name__ == "__main__":
    main()
