"""messages_3d: depth and camera messages -> arrays, 3D boxes -> Detection3DArray, PointCloud2."""
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, PointField
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray

from saom_ros import messages_3d
from saom_ros.depth import DepthError, Intrinsics, boxes_3d
from saom_ros.image_codec import array_to_image
from test_messages import HEADER, make_instances, rect


def test_depth_messages_in_both_units_and_another_size():
    mm = np.full((4, 6), 1500, np.uint16)
    mm[0, 0] = 0
    got = messages_3d.depth_image(array_to_image(mm, "16UC1"), (4, 6))
    assert got.dtype == np.uint16 and np.array_equal(got, mm)
    metres = np.full((2, 3), 2.0, np.float32)
    metres[1, 2] = np.nan
    got = messages_3d.depth_image(array_to_image(metres, "32FC1"), (4, 6))  # nearest neighbour
    assert got.shape == (4, 6) and np.isnan(got[2:, 4:]).all() and (got[:2] == 2.0).all()


def test_bad_depth_messages_are_value_errors():
    with pytest.raises(DepthError, match="unsupported depth encoding 'rgb8'"):
        messages_3d.depth_image(array_to_image(np.zeros((4, 6, 3), np.uint8), "rgb8"), (4, 6))
    with pytest.raises(DepthError, match="aspect ratio"):
        messages_3d.depth_image(array_to_image(np.zeros((4, 4), np.uint16), "16UC1"), (4, 6))
    truncated = array_to_image(np.zeros((4, 6), np.float32), "32FC1")
    truncated.data = truncated.data[:10]
    with pytest.raises(DepthError, match="depth image: data holds 10 bytes"):
        messages_3d.depth_image(truncated, (4, 6))


def test_depth_decoding_takes_the_node_s_pixel_limit():
    depth = array_to_image(np.ones((4, 6), np.float32), "32FC1")
    assert messages_3d.depth_image(depth, (4, 6), max_pixels=24).shape == (4, 6)
    with pytest.raises(DepthError, match="4 = 24 pixels exceeds the limit max_image_pixels = 23"):
        messages_3d.depth_image(depth, (4, 6), max_pixels=23)


def test_intrinsics_from_camera_info():
    info = CameraInfo(height=8, width=12, k=[10.0, 0, 5.5, 0, 20.0, 3.5, 0, 0, 1])
    assert messages_3d.intrinsics(info, (8, 12)) == Intrinsics(10.0, 20.0, 5.5, 3.5)
    with pytest.raises(DepthError):
        messages_3d.intrinsics(CameraInfo(), (8, 12))  # all zeros: uncalibrated
    # A rectified camera's P wins over K (image_geometry's convention); binning and ROI apply.
    info.p = [9.0, 0, 5.0, 0, 0, 18.0, 3.0, 0, 0, 0, 1, 0]
    assert messages_3d.intrinsics(info, (8, 12)) == Intrinsics(9.0, 18.0, 5.0, 3.0)
    info.binning_x = info.binning_y = 2
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 1, 1, 8, 4
    assert messages_3d.intrinsics(info, (2, 4)) == Intrinsics(4.5, 9.0, 1.75, 0.75)


@pytest.fixture
def scene():
    h, w = 20, 30
    instances = make_instances([rect(h, w, 2, 3, 10, 12), rect(h, w, 15, 5, 25, 15),
                                rect(h, w, 0, 18, 5, 19)], [4, 7, 2], [0.9, 0.6, 0.5])
    depth = np.full((h, w), 2.0, np.float32)
    depth[:, 15:] = 3.0
    depth[18:] = np.nan  # instance 3 has no valid depth
    boxes = boxes_3d(instances.instance_image, depth, Intrinsics(30.0, 30.0, 14.5, 9.5),
                     with_points=True)
    return instances, boxes, np.array([11, 12, 13], np.uint16)


def test_detections_3d(scene):
    instances, boxes, ids = scene
    msg = messages_3d.detections_3d(boxes, ids, instances, HEADER)
    assert msg.header == HEADER and [d.id for d in msg.detections] == ["11", "12"]
    first = msg.detections[0]
    # Columns 2..10, rows 3..12 at 2 m: x = (u - 14.5) * 2 / 30, y = (v - 9.5) * 2 / 30.
    c, s = first.bbox.center.position, first.bbox.size
    assert (c.x, c.y, c.z) == pytest.approx((((2 + 10) / 2 - 14.5) / 15, (7.5 - 9.5) / 15, 2.0))
    assert (s.x, s.y, s.z) == pytest.approx((8 / 15, 9 / 15, 0.0))
    o = first.bbox.center.orientation
    assert (o.x, o.y, o.z, o.w) == (0.0, 0.0, 0.0, 1.0)
    hyp = first.results[0]
    assert hyp.hypothesis.class_id == "4" and hyp.hypothesis.score == pytest.approx(0.9)
    assert hyp.pose.pose.position == first.bbox.center.position
    assert msg.detections[1].bbox.center.position.z == pytest.approx(3.0)


@pytest.mark.parametrize("frame_id", ["", "c", "camera_optical_frame"])
@pytest.mark.parametrize("first_id", [7, 1000, 65535])
def test_serialized_detections_3d_read_back_as_detections_3d(scene, frame_id, first_id):
    instances, boxes, _ = scene
    instances.class_ids[:2] = [3, 1234]  # strings of other lengths move the padding
    ids = np.array([first_id, 42, 13], np.uint16)
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = -5, 999_999_999
    wire = messages_3d.serialized_detections_3d(boxes, ids, instances, header)
    expected = messages_3d.detections_3d(boxes, ids, instances, header)
    assert deserialize_message(wire, Detection3DArray) == expected
    assert len(wire) == len(serialize_message(expected))
    empty = messages_3d.serialized_detections_3d(boxes_3d(instances.instance_image * 0,
                                                          np.ones((20, 30), np.float32),
                                                          Intrinsics(30.0, 30.0, 14.5, 9.5)),
                                                 ids, instances, header)
    assert deserialize_message(empty, Detection3DArray) == Detection3DArray(header=header)


def test_point_cloud(scene):
    instances, boxes, ids = scene
    msg = messages_3d.point_cloud(boxes, ids, instances, HEADER)
    assert msg.header == HEADER and msg.height == 1 and msg.width == 9 * 10 + 11 * 11
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
        ("instance", 12, PointField.UINT16), ("class", 14, PointField.UINT16)]
    cloud = np.frombuffer(bytes(msg.data), messages_3d.POINT_DTYPE)
    assert msg.point_step == 16 and msg.row_step == 16 * msg.width and len(cloud) == msg.width
    pairs = set(zip(cloud["instance"].tolist(), cloud["class"].tolist()))
    assert sorted(pairs) == [(11, 4), (12, 7)]
    np.testing.assert_allclose(cloud["z"][cloud["instance"] == 12], 3.0)
