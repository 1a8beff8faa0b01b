"""Depth and camera messages -> arrays, and 3D results -> vision_msgs / PointCloud2. No node.

The math lives in ``depth``; this module only converts. Every 3D output is in the colour camera's
optical frame and carries the colour image's header.

~/detections_3d is published serialized (``serialized_detections_3d``): rclpy would convert the
message field by field from Python objects (with building them, ~25 us per Detection3D), while
the CDR bytes of all of them take one numpy array and a short loop.
"""
from __future__ import annotations

import array
import functools
import struct
import sys
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from saom_ros.depth import Boxes3D, DepthError, Intrinsics, depth_scale, match_size
from saom_ros.image_codec import image_to_array
from saom_ros.image_decode import MAX_IMAGE_PIXELS

if TYPE_CHECKING:  # everything.py imports torch; this module must not.
    from saom_ros.everything import Instances

# ~/points layout: x, y, z in metres, the instance's id (as in ~/instances) and its class id.
POINT_DTYPE = np.dtype([("x", "=f4"), ("y", "=f4"), ("z", "=f4"), ("instance", "=u2"),
                        ("class", "=u2")])
POINT_FIELDS = [PointField(name=name, offset=POINT_DTYPE.fields[name][1], count=1,
                           datatype=PointField.FLOAT32 if name in "xyz" else PointField.UINT16)
                for name in POINT_DTYPE.names]
# Little-endian plain CDR (XCDR1), as ROS 2 middlewares put messages on the wire: this
# encapsulation header, then every field aligned to its size counted from after the header.
CDR_LE = b"\x00\x01\x00\x00"
# The float64 fields of a Detection3D with one hypothesis, in wire order: score, pose (position,
# orientation), covariance (all zero), bbox centre (position, orientation), bbox size.
_SCORE, _POSE, _CENTER, _SIZE, _NUMBERS = 0, 1, 44, 51, 54
_ONE = struct.pack("<I", 1)


def stamp_ns(header: Header) -> int:
    """The header's stamp in integer nanoseconds."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def depth_image(msg: Image, size: tuple[int, int],
                max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The depth as stored (``msg.encoding``'s units: ``depth.boxes_3d`` converts only the
    pixels it uses) registered to a colour image of ``size`` (h, w).

    ValueError (``DepthError``, ``ImageDecodeError``) for an unsupported encoding, a malformed
    message, more than ``max_pixels`` pixels, or a size of another aspect ratio."""
    depth_scale(msg.encoding)
    try:
        depth = image_to_array(msg, max_pixels)
    except ValueError as err:  # say which image: the colour one is decoded the same way
        raise DepthError(f"depth image: {err}") from None
    return match_size(depth, size)


def intrinsics(info: CameraInfo, size: tuple[int, int]) -> Intrinsics:
    """The camera info's intrinsics for a colour image of ``size`` (h, w), its binning and ROI
    applied; DepthError if unusable. As image_geometry's PinholeCameraModel: the projection
    matrix P (that of the rectified image) when it is set, else K."""
    p = np.asarray(info.p, dtype=np.float64)
    k = p[[0, 1, 2, 4, 5, 6, 8, 9, 10]] if p.shape == (12,) and p.any() else info.k
    roi = info.roi
    return Intrinsics.from_camera_info(k, (info.height, info.width), size,
                                       (info.binning_x, info.binning_y),
                                       (roi.x_offset, roi.y_offset, roi.width, roi.height))


class _Boxed(NamedTuple):
    """Per boxed instance, in box order: track id, class id, class score, box centre and size."""

    ids: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    centers: np.ndarray  # float64 [K, 3]
    sizes: np.ndarray  # float64 [K, 3]


def _boxed(boxes: Boxes3D, ids: np.ndarray, instances: Instances) -> _Boxed:
    index = boxes.labels - 1
    return _Boxed(ids.take(index), instances.class_ids.take(index),
                  instances.class_scores.take(index), boxes.centers, boxes.sizes)


def detections_3d(boxes: Boxes3D, ids: np.ndarray, instances: Instances,
                  header: Header) -> Detection3DArray:
    """One Detection3D per boxed instance, in the instances' order: ``id`` as in ~/detections,
    the class hypothesis with its pose at the box centre, an axis-aligned box (identity
    orientation)."""
    return _message(_boxed(boxes, ids, instances), header)


def serialized_detections_3d(boxes: Boxes3D, ids: np.ndarray, instances: Instances,
                             header: Header) -> bytes:
    """``detections_3d`` serialized, for ``Publisher.publish``: encoded here when the middleware
    reads that encoding back as the same message (checked once per process), else by rclpy."""
    boxed = _boxed(boxes, ids, instances)
    if _encoding_matches():
        return _encode(boxed, header)
    return serialize_message(_message(boxed, header))


def _message(boxed: _Boxed, header: Header) -> Detection3DArray:
    # Every number at once in numpy; the loop only fills messages (attribute access is the cost).
    found = []
    for name, class_id, score, (x, y, z), (sx, sy, sz) in zip(
            boxed.ids.tolist(), boxed.class_ids.tolist(), boxed.scores.tolist(),
            boxed.centers.tolist(), boxed.sizes.tolist()):
        det = Detection3D(header=header, id=str(name))  # orientations default to identity
        box = det.bbox
        position = box.center.position
        position.x, position.y, position.z = x, y, z
        size = box.size
        size.x, size.y, size.z = sx, sy, sz
        hyp = ObjectHypothesisWithPose()
        hypothesis = hyp.hypothesis
        hypothesis.class_id, hypothesis.score = str(class_id), score
        position = hyp.pose.pose.position
        position.x, position.y, position.z = x, y, z
        det.results = [hyp]
        found.append(det)
    return Detection3DArray(header=header, detections=found)


def _encode(boxed: _Boxed, header: Header) -> bytes:
    """The CDR bytes of ``_message(boxed, header)``."""
    numbers = np.zeros((len(boxed.ids), _NUMBERS))
    numbers[:, _SCORE] = boxed.scores
    numbers[:, _POSE:_POSE + 3] = numbers[:, _CENTER:_CENTER + 3] = boxed.centers
    numbers[:, _POSE + 6] = numbers[:, _CENTER + 6] = 1.0  # identity orientations (w)
    numbers[:, _SIZE:_SIZE + 3] = boxed.sizes
    rows = numbers.tobytes()
    row_bytes = _NUMBERS * numbers.itemsize
    head = struct.pack("<iI", header.stamp.sec, header.stamp.nanosec) + _string(header.frame_id)
    out = bytearray(CDR_LE)
    out += head
    _align(out, 4)
    out += struct.pack("<I", len(boxed.ids))
    for i, (name, class_id) in enumerate(zip(boxed.ids.tolist(), boxed.class_ids.tolist())):
        _align(out, 4)
        out += head
        _align(out, 4)
        out += _ONE  # results: one hypothesis
        out += _string(str(class_id))
        _align(out, 8)
        out += rows[i * row_bytes:(i + 1) * row_bytes]
        out += _string(str(name))
    return bytes(out)


def _string(text: str) -> bytes:
    """A CDR string: its length with the terminating NUL, the UTF-8 bytes, the NUL."""
    data = text.encode()
    return struct.pack("<I", len(data) + 1) + data + b"\x00"


def _align(out: bytearray, size: int) -> None:
    """Zero padding to a multiple of ``size`` bytes, counted from after the encapsulation."""
    out += bytes(-(len(out) - len(CDR_LE)) % size)


@functools.cache
def _encoding_matches() -> bool:
    """Whether the middleware deserializes ``_encode`` as ``_message``: checked on ids and class
    ids of every length modulo 4 (they move the alignment padding)."""
    count = 8
    numbers = np.arange(count * 3, dtype=np.float64).reshape(count, 3) / 7
    probe = _Boxed(ids=np.array([1, 22, 333, 4444, 55555, 6, 77, 888]),
                   class_ids=np.array([9, 10, 100, 1000, 1, 22, 333, 4444]),
                   scores=np.linspace(0, 1, count, dtype=np.float32), centers=numbers,
                   sizes=numbers[::-1])
    header = Header(frame_id="optical")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 123_456_789
    try:
        return deserialize_message(_encode(probe, header), Detection3DArray) == _message(
            probe, header)
    except Exception:  # noqa: BLE001 (whatever the middleware objects to: rclpy serializes)
        return False


def point_cloud(boxes: Boxes3D, ids: np.ndarray, instances: Instances,
                header: Header) -> PointCloud2:
    """The points the boxes were made of (flying pixels removed), unorganised, with each point's
    instance id and class id."""
    index = boxes.point_labels.astype(np.intp) - 1
    cloud = np.empty(len(index), POINT_DTYPE)
    cloud["x"], cloud["y"], cloud["z"] = boxes.points.T
    cloud["instance"] = ids[index]
    cloud["class"] = instances.class_ids[index]
    msg = PointCloud2(header=header, height=1, width=len(cloud), fields=POINT_FIELDS,
                      is_bigendian=sys.byteorder == "big", point_step=POINT_DTYPE.itemsize,
                      row_step=POINT_DTYPE.itemsize * len(cloud), is_dense=True)
    msg.data = array.array("B", cloud.tobytes())  # skips rclpy's per-element check
    return msg
