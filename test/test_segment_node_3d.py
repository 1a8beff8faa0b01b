"""segment_node's 3D outputs and track ids, end to end over real DDS from another process.

Synthetic colour frames with depth of our own making: constant planes in 16UC1 (mm) and 32FC1
(m), regions of invalid depth, depth of another size; every 3D box is checked against the
back-projection of its instance's pixels in ~/instances. Malformed depth and camera info must
leave the node running with its 2D outputs.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray

from ros_helpers import FAST_ENGINE, ROOT, Listener, NodeProcess, camera_image
from saom_ros.image_codec import array_to_image, image_to_array
from saom_ros.messages_3d import POINT_DTYPE
# The fixtures ros (DDS in this process), context (a private one) and checkpoint (a tiny model)
# are test_segment_node's.
from test_segment_node import (ANSWER_TIMEOUT, START_TIMEOUT, checkpoint, context,  # noqa: F401
                               make_node, ros)

H, W = 48, 64
FX, FY, CX, CY = 50.0, 55.0, 31.5, 23.5
NODE = "/d3/segment_node"


class Camera:
    """Publishes colour, depth and camera info; records ~/detections_3d and ~/points."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        node, qos = listener.node, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.depth_pub = node.create_publisher(Image, "/cam3d/depth", qos)
        self.info_pub = node.create_publisher(CameraInfo, "/cam3d/camera_info", qos)
        self.received: dict[str, list] = {"detections_3d": [], "points": []}
        node.create_subscription(Detection3DArray, f"{NODE}/detections_3d",
                                 self.received["detections_3d"].append, qos)
        node.create_subscription(PointCloud2, f"{NODE}/points", self.received["points"].append, qos)

    def by_stamp(self, name: str, stamp) -> list:
        return [m for m in self.received[name] if m.header.stamp == stamp]

    def send(self, seq: int, depth: Image | None, info: CameraInfo | None, process: NodeProcess,
             want_3d: bool = True, timeout: float = ANSWER_TIMEOUT, rgb: np.ndarray | None = None):
        """Publish depth, camera info and colour frame ``seq`` (``rgb``, default a blocky test
        image; again every few seconds while discovery settles) until its 2D outputs (and 3D
        ones, with ``want_3d``) came back; returns (instance ids image, detections_3d or None,
        points or None)."""
        rgb = camera_image(seq) if rgb is None else rgb
        colour = array_to_image(rgb, "rgb8", header(seq))
        stamp, lis = colour.header.stamp, self.listener

        def answered() -> bool:
            return (bool(lis.by_stamp("instances", stamp))
                    and (not want_3d or bool(self.by_stamp("detections_3d", stamp))))

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if info is not None:
                self.info_pub.publish(info)
            if depth is not None:
                self.depth_pub.publish(depth)
            lis.pub.publish(colour)
            if lis.spin_until(answered, 5.0, process):
                lis.spin_until(lambda: False, 0.5)  # let a late 3D message arrive, if any
                found = [self.by_stamp(n, stamp) for n in ("detections_3d", "points")]
                return (image_to_array(lis.by_stamp("instances", stamp)[0]),
                        *[f[0] if f else None for f in found])
            assert process.alive(), process.output
        raise AssertionError(f"no answer for frame {seq}; node output:\n{process.output}")


def header(seq: int, offset_ns: int = 0) -> Header:
    h = Header(frame_id="cam_color_optical")
    h.stamp.sec, h.stamp.nanosec = 2000 + seq, 500_000_000 + offset_ns
    return h


def camera_info(seq: int, size=(H, W), k=(FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0)) -> CameraInfo:
    return CameraInfo(header=header(seq), height=size[0], width=size[1], k=list(k))


@pytest.fixture(scope="module")
def node_process(ros, checkpoint, tmp_path_factory):
    proc = NodeProcess(tmp_path_factory.mktemp("node3d"),
                       {"checkpoint": checkpoint, "use_depth": True, "publish_points": True,
                        "input_reliability": "reliable", **FAST_ENGINE},
                       {"image": "/cam3d/image", "depth": "/cam3d/depth",
                        "camera_info": "/cam3d/camera_info", "__ns": "/d3"})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def camera(ros, node_process):
    lis = Listener("/cam3d/image", node=NODE)
    assert lis.wait_for_subscriber(START_TIMEOUT, node_process), node_process.output
    yield Camera(lis)
    lis.close()


def test_depth_inputs_3d_outputs_and_tracks_follow_the_lifecycle(context, checkpoint):
    node = make_node(context, checkpoint, use_depth=True, publish_points=True)
    ok = TransitionCallbackReturn.SUCCESS

    def subscribed(topic: str) -> bool:
        return bool(node.get_subscriptions_info_by_topic(topic))

    try:
        assert subscribed("/depth") and subscribed("/camera_info")
        for topic in ("/segment_node/detections_3d", "/segment_node/points"):
            assert node.get_publishers_info_by_topic(topic)
        footprint = np.ones((8, 8), np.uint16)
        (first,) = node._tracker.assign(footprint, 1).tolist()
        assert node._tracker.assign(footprint, 1).tolist() == [first]  # the same object
        assert node.trigger_deactivate() == ok
        assert not subscribed("/depth") and not subscribed("/camera_info")
        assert node.trigger_activate() == ok
        (second,) = node._tracker.assign(footprint, 1).tolist()
        assert second != first  # tracks were forgotten, their ids wait out the reuse delay
        assert node.trigger_deactivate() == ok and node.trigger_cleanup() == ok
        assert node._depth is None
        assert not node.get_publishers_info_by_topic("/segment_node/detections_3d")
        assert node.trigger_configure() == ok and node.trigger_activate() == ok
        assert node._tracker.assign(footprint, 1).tolist()[0] not in (first, second)
    finally:
        node.close()
        node.destroy_node()


def expected_boxes(labels: np.ndarray, depth_m: np.ndarray) -> dict[int, tuple]:
    """id -> (centre, size) of the back-projection of its pixels with valid depth (constant
    depth per instance here, so the robust rule keeps every point)."""
    boxes = {}
    for inst_id in set(np.unique(labels).tolist()) - {0}:
        v, u = np.nonzero((labels == inst_id) & np.isfinite(depth_m) & (depth_m > 0))
        if not len(u):
            continue
        z = depth_m[v, u].astype(np.float64)
        pts = np.stack([(u - CX) * z / FX, (v - CY) * z / FY, z], axis=1)
        low, high = pts.min(axis=0), pts.max(axis=0)
        boxes[inst_id] = ((low + high) / 2, high - low)
    return boxes


def check_3d(labels, detections, cloud, depth_m, colour_header):
    assert detections.header == colour_header and cloud.header == colour_header
    expected = expected_boxes(labels, depth_m)
    assert expected, "the fast settings keep every mask; expected instances with depth"
    assert {int(d.id) for d in detections.detections} == set(expected)
    for det in detections.detections:
        centre, size = expected[int(det.id)]
        c, s = det.bbox.center.position, det.bbox.size
        np.testing.assert_allclose([c.x, c.y, c.z], centre, atol=1e-5)
        np.testing.assert_allclose([s.x, s.y, s.z], size, atol=1e-5)
        assert det.bbox.center.orientation.w == 1.0
        assert det.results[0].pose.pose.position == det.bbox.center.position
        assert det.header == colour_header
    points = np.frombuffer(bytes(cloud.data), POINT_DTYPE)
    valid = (labels > 0) & np.isfinite(depth_m) & (depth_m > 0)
    assert len(points) == valid.sum()
    assert set(points["instance"].tolist()) == set(expected)


def test_16uc1_plane_with_invalid_region(camera, node_process):
    depth_mm = np.full((H, W), 1500, np.uint16)
    depth_mm[:, :20] = 0  # invalid: no return
    depth = array_to_image(depth_mm, "16UC1", header(0))
    labels, dets, cloud = camera.send(0, depth, camera_info(0), node_process)
    depth_m = np.where(depth_mm > 0, depth_mm / 1000.0, np.nan)
    check_3d(labels, dets, cloud, depth_m, header(0))


def test_32fc1_plane_at_half_size_within_the_stamp_tolerance(camera, node_process):
    small = np.full((H // 2, W // 2), 2.5, np.float32)
    small[:6, :] = np.nan
    small[6:10, :] = np.inf
    depth = array_to_image(small, "32FC1", header(1, offset_ns=10_000_000))  # 10 ms off: pairs
    labels, dets, cloud = camera.send(1, depth, camera_info(1), node_process)
    check_3d(labels, dets, cloud, np.repeat(np.repeat(small, 2, axis=0), 2, axis=1), header(1))


def test_depth_outside_the_tolerance_or_of_another_aspect_gives_no_3d(camera, node_process):
    late = array_to_image(np.full((H, W), 1.0, np.float32), "32FC1", header(2, 60_000_000))
    _, dets, _ = camera.send(2, late, camera_info(2), node_process, want_3d=False)
    assert dets is None
    square = array_to_image(np.full((H, H), 1.0, np.float32), "32FC1", header(3))
    labels, dets, _ = camera.send(3, square, camera_info(3), node_process, want_3d=False)
    assert dets is None and labels.shape == (H, W)  # the 2D outputs went on
    assert "not the same aspect ratio" in node_process.output or \
        "no depth image within" in node_process.output  # throttled: one of the two warned


def test_malformed_depth_and_camera_info_are_survived(camera, node_process):
    good_depth = np.full((H, W), 1.2, np.float32)
    truncated = array_to_image(good_depth, "32FC1", header(4))
    truncated.data = bytes(truncated.data)[:100]
    wrong_encoding = array_to_image(camera_image(0), "rgb8", header(5))
    lis = camera.listener
    lis.spin_until(lambda: False, 1.5)  # a /diagnostics report that counts every earlier frame
    before = int(lis.diagnostics_values()["frames_without_3d"])
    for seq, depth, info in ((4, truncated, camera_info(4)),
                             (5, wrong_encoding, camera_info(5)),
                             (6, array_to_image(good_depth, "32FC1", header(6)),
                              camera_info(6, k=[0.0] * 9)),  # uncalibrated
                             (7, array_to_image(good_depth, "32FC1", header(7)),
                              camera_info(7, size=(30, 30)))):  # another aspect ratio
        labels, dets, _ = camera.send(seq, depth, info, node_process, want_3d=False)
        assert dets is None and labels.shape == (H, W)
    assert node_process.alive()
    # The warnings are throttled; the count shows that each of the four frames was skipped.
    assert lis.spin_until(lambda: int(lis.diagnostics_values()["frames_without_3d"]) >= before + 4,
                          15, node_process), lis.diagnostics_values()
    assert any(status.level == DiagnosticStatus.WARN and
               status.message.endswith("frame(s) without 3D output")
               for msg in lis.messages("diagnostics") for status in msg.status
               if status.name == lis.node_name)
    labels, dets, cloud = camera.send(8, array_to_image(good_depth, "32FC1", header(8)),
                                      camera_info(8), node_process)
    check_3d(labels, dets, cloud, good_depth, header(8))
    assert "no 3D output" in node_process.output


def test_unusable_depth_is_refused_on_arrival_and_counted(camera, node_process):
    """Depth of a colour encoding and depth whose data does not hold its rows are refused when
    they arrive (not buffered until a colour frame asks for them): counted, warned, WARN."""
    lis = camera.listener
    settled: dict = {}
    for _ in range(10):  # until two reports agree: every earlier depth image is counted
        lis.spin_until(lambda: False, 1.2)
        now = lis.diagnostics_values()
        if settled and now.get("depth_frames_refused") == settled.get("depth_frames_refused"):
            break
        settled = now
    before = int(settled["depth_frames_refused"])
    truncated = array_to_image(np.full((H, W), 1.2, np.float32), "32FC1", header(20))
    truncated.data = bytes(truncated.data)[:100]
    refused = [array_to_image(camera_image(0), "rgb8", header(21)), truncated]
    for depth in refused:
        camera.depth_pub.publish(depth)
    assert lis.spin_until(lambda: int(lis.diagnostics_values()["depth_frames_refused"])
                          == before + len(refused), 15, node_process), lis.diagnostics_values()
    assert any(status.level == DiagnosticStatus.WARN
               and status.message.endswith("depth image(s) refused")
               for msg in lis.messages("diagnostics") for status in msg.status
               if status.name == lis.node_name)
    assert "depth image refused: unsupported encoding 'rgb8'" in node_process.output or \
        "depth image refused: data holds 100 bytes" in node_process.output  # throttled
    assert node_process.alive()


@pytest.mark.slow
@pytest.mark.parametrize("prompt_strategy", ["grid", "streaming"])
def test_a_scene_shifting_a_few_pixels_per_frame_keeps_its_ids(ros, tmp_path, prompt_strategy):
    """The packaged model on a demo frame whose content moves 3 px right per frame: a mask that
    reappears (IoU > 0.5 with its predecessor moved by 3 px) keeps its id. With streaming prompts
    the tracker follows the engine's own association (Instances.prompt_source)."""
    import cv2
    proc = NodeProcess(tmp_path, {"prompt_strategy": prompt_strategy},
                       {"image": "/cam3d/image", "__ns": "/d3"})
    lis = Listener("/cam3d/image", node=NODE)
    try:
        assert lis.wait_for_subscriber(START_TIMEOUT, proc), proc.output
        camera = Camera(lis)
        frame = cv2.cvtColor(cv2.imread(str(ROOT / "saom_ros/data/demo_frames/frame_00.png")),
                             cv2.COLOR_BGR2RGB)
        step, frames = 3, 5
        padded = np.pad(frame, ((0, 0), (step * frames, 0), (0, 0)), mode="edge")
        width = frame.shape[1]
        previous, continued = None, 0
        for k in range(frames):
            start = step * (frames - k)
            rgb = np.ascontiguousarray(padded[:, start:start + width])
            labels, _, _ = camera.send(100 + k, None, None, proc, want_3d=False, rgb=rgb)
            if previous is not None:
                moved = np.zeros_like(previous)
                moved[:, step:] = previous[:, :-step]
                for old_id in set(np.unique(moved).tolist()) - {0}:
                    was = moved == old_id
                    for new_id in set(np.unique(labels).tolist()) - {0}:
                        now = labels == new_id
                        if (was & now).sum() > 0.5 * (was | now).sum():
                            assert new_id == old_id, (k, old_id, new_id)
                            continued += 1
            previous = labels
        assert continued >= 3, "too few objects seen in consecutive frames to check tracking"
    finally:
        lis.close()
        proc.stop()
