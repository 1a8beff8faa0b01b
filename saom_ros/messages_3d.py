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
    msg = Detection3DArray(header=header)
    for label, center, size in zip(boxes.labels.tolist(), boxes.centers.tolist(),
                                   boxes.sizes.tolist()):
        index = label - 1
        det = Detection3D(header=header, id=str(int(ids[index])))
        box = det.bbox
        box.center.position.x, box.center.position.y, box.center.position.z = center
        box.center.orientation.w = 1.0
        box.size.x, box.size.y, box.size.z = size
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = str(int(instances.class_ids[index]))
        hyp.hypothesis.score = float(instances.class_scores[index])
        hyp.pose.pose.position.x, hyp.pose.pose.position.y, hyp.pose.pose.position.z = center
        hyp.pose.pose.orientation.w = 1.0
        det.results.append(hyp)
        msg.detections.append(det)
    return msg


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
