"""Depth and camera messages -> arrays, and 3D results -> vision_msgs / PointCloud2. No node.

The math lives in ``depth``; this module only converts. Every 3D output is in the colour camera's
optical frame and carries the colour image's header.
"""
from __future__ import annotations

import array
import sys
from typing import TYPE_CHECKING

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from saom_ros.depth import (DEPTH_SCALES, Boxes3D, DepthError, Intrinsics, depth_in_metres,
                            match_size)
from saom_ros.image_codec import image_to_array

if TYPE_CHECKING:  # everything.py imports torch; this module must not.
    from saom_ros.everything import Instances

# ~/points layout: x, y, z in metres, the instance's id (as in ~/instances) and its class id.
POINT_DTYPE = np.dtype([("x", "=f4"), ("y", "=f4"), ("z", "=f4"), ("instance", "=u2"),
                        ("class", "=u2")])
POINT_FIELDS = [PointField(name=name, offset=POINT_DTYPE.fields[name][1], count=1,
                           datatype=PointField.FLOAT32 if name in "xyz" else PointField.UINT16)
                for name in POINT_DTYPE.names]


def stamp_ns(header: Header) -> int:
    """The header's stamp in integer nanoseconds."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def depth_metres(msg: Image, size: tuple[int, int]) -> np.ndarray:
    """float32 metres (NaN invalid) registered to a colour image of ``size`` (h, w).

    ValueError (``DepthError``, ``ImageDecodeError``) for an unsupported encoding, a malformed
    message, or a size of another aspect ratio."""
    if msg.encoding not in DEPTH_SCALES:
        raise DepthError(f"unsupported depth encoding {msg.encoding!r}; supported: "
                         f"{', '.join(DEPTH_SCALES)}")
    return depth_in_metres(match_size(image_to_array(msg), size), msg.encoding)


def intrinsics(info: CameraInfo, size: tuple[int, int]) -> Intrinsics:
    """The camera info's K for a colour image of ``size`` (h, w); DepthError if unusable."""
    return Intrinsics.from_camera_info(info.k, (info.height, info.width), size)


def detections_3d(boxes: Boxes3D, ids: np.ndarray, instances: Instances,
                  header: Header) -> Detection3DArray:
    """One Detection3D per boxed instance, in score order: ``id`` as in ~/detections, the class
    hypothesis with its pose at the box centre, an axis-aligned box (identity orientation)."""
    index = boxes.labels - 1
    # Every number at once in numpy; the loop only fills messages (attribute access is the cost).
    names = ids.take(index).tolist()
    classes = instances.class_ids.take(index).tolist()
    scores = instances.class_scores.take(index).tolist()
    found = []
    for name, class_id, score, (x, y, z), (sx, sy, sz) in zip(
            names, classes, scores, boxes.centers.tolist(), boxes.sizes.tolist()):
        det = Detection3D(header=header, id=str(name))
        box = det.bbox
        center = box.center
        position = center.position
        position.x, position.y, position.z = x, y, z
        center.orientation.w = 1.0
        size = box.size
        size.x, size.y, size.z = sx, sy, sz
        hyp = ObjectHypothesisWithPose()
        hypothesis = hyp.hypothesis
        hypothesis.class_id, hypothesis.score = str(class_id), score
        pose = hyp.pose.pose
        position = pose.position
        position.x, position.y, position.z = x, y, z
        pose.orientation.w = 1.0
        det.results = [hyp]
        found.append(det)
    return Detection3DArray(header=header, detections=found)


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
