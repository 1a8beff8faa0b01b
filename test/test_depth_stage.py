"""depth_stage: depth paired by stamp, camera info, why a frame gets no 3D output, and depth
images refused on arrival."""
import re

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray

from saom_ros.depth import DepthError
from saom_ros.depth_stage import DepthStage
from saom_ros.image_codec import array_to_image
from test_messages import make_instances, rect

INFO = CameraInfo(height=20, width=30, k=[30.0, 0, 14.5, 0, 30.0, 9.5, 0, 0, 1])


def header(sec, nanosec=0):
    h = Header(frame_id="camera")
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    return h


def depth_at(stamp_header, metres):
    return array_to_image(np.full((20, 30), metres, np.float32), "32FC1", stamp_header)


@pytest.fixture
def instances():
    return make_instances([rect(20, 30, 2, 3, 10, 12)], [4], [0.9])


def test_pairs_the_nearest_depth_within_the_tolerance(instances):
    stage = DepthStage(tolerance_s=0.02, publish_points=True)
    stage.set_camera_info(INFO)
    for nanosec, metres in ((0, 1.0), (30_000_000, 2.0), (60_000_000, 3.0)):
        stage.add_depth(depth_at(header(5, nanosec), metres))
    wire, cloud = stage.outputs(instances, np.array([9], np.uint16), header(5, 35_000_000))
    dets = deserialize_message(wire, Detection3DArray)
    assert dets.header == header(5, 35_000_000) and dets.detections[0].id == "9"
    assert dets.detections[0].bbox.center.position.z == pytest.approx(2.0)
    assert cloud.width == 9 * 10
    with pytest.raises(DepthError, match=r"no depth image within 0.02 s .*-0.025 s"):
        stage.outputs(instances, np.array([9], np.uint16), header(5, 85_000_000))


def test_reasons_for_no_3d_output(instances):
    stage = DepthStage(tolerance_s=0.0, publish_points=False)
    ids = np.array([1], np.uint16)
    with pytest.raises(DepthError, match="no depth image received yet"):
        stage.outputs(instances, ids, header(1))
    stage.add_depth(depth_at(header(1), 1.0))
    with pytest.raises(DepthError, match="no camera info received yet"):
        stage.outputs(instances, ids, header(1))
    stage.set_camera_info(INFO)
    wire, cloud = stage.outputs(instances, ids, header(1))
    assert len(deserialize_message(wire, Detection3DArray).detections) == 1 and cloud is None
    stage.reset()
    with pytest.raises(DepthError, match="no depth image received yet"):
        stage.outputs(instances, ids, header(1))


@pytest.mark.parametrize("make, words", [
    (lambda: array_to_image(np.zeros((20, 30, 3), np.uint8), "rgb8", header(1)),
     "unsupported encoding 'rgb8'; supported: 16UC1, mono16, 32FC1"),
    (lambda: depth_at(header(1), 1.0), "image of 30x20 = 600 pixels exceeds the limit "
                                       "max_image_pixels = 500"),
    (lambda: Image(header=header(1), height=2048, width=2048, encoding="32FC1",
                   step=2048 * 4), "exceeds the limit"),  # claims 16 MiB, holds nothing
])
def test_unusable_depth_is_refused_on_arrival_and_not_kept(instances, make, words):
    stage = DepthStage(tolerance_s=0.0, publish_points=False, max_pixels=500)
    stage.set_camera_info(INFO)
    with pytest.raises(DepthError, match=f"depth image refused: .*{re.escape(words)}"):
        stage.add_depth(make())
    with pytest.raises(DepthError, match="no depth image received yet"):
        stage.outputs(instances, np.array([1], np.uint16), header(1))


def test_a_depth_image_whose_data_does_not_hold_its_rows_is_refused():
    stage = DepthStage(tolerance_s=0.0, publish_points=False)
    truncated = depth_at(header(1), 1.0)
    truncated.data = bytes(truncated.data)[:100]
    with pytest.raises(DepthError, match="depth image refused: data holds 100 bytes"):
        stage.add_depth(truncated)
    wrong_step = depth_at(header(1), 1.0)
    wrong_step.step = 30  # a 30-pixel 32FC1 row takes 120 bytes
    with pytest.raises(DepthError, match="step 30 is less than"):
        stage.add_depth(wrong_step)


def test_buffered_depth_is_bounded_in_bytes():
    """2048x2048 32FC1 frames (16 MiB, within the default pixel limit): the last 8 are kept,
    not 32 (512 MiB)."""
    stage = DepthStage(tolerance_s=0.0, publish_points=False)
    side = 2048
    data = bytes(side * side * 4)
    for k in range(40):
        stage.add_depth(Image(header=header(100 + k), height=side, width=side,
                              encoding="32FC1", step=side * 4, data=data))
    assert len(stage._depth) == 8 and stage._depth.bytes == 8 * len(data)


def test_a_missing_depth_says_where_to_look_when_depth_is_late(instances):
    stage = DepthStage(tolerance_s=0.02, publish_points=False)
    stage.set_camera_info(INFO)
    stage.add_depth(depth_at(header(5), 1.0))
    with pytest.raises(DepthError, match=r"newest depth is -1\.000 s from it\); depth late\? "
                                         r".*fastdds_large_images\.xml.*Frame delivery"):
        stage.outputs(instances, np.array([1], np.uint16), header(6))
    with pytest.raises(DepthError) as newer:  # depth ahead of colour: not a delivery problem
        stage.outputs(instances, np.array([1], np.uint16), header(4))
    assert "+1.000 s from it)" in str(newer.value) and "fastdds" not in str(newer.value)
