"""depth_stage: depth paired by stamp, camera info, and why a frame gets no 3D output."""
import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo
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
