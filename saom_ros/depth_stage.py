"""The node's 3D stage: depth and camera info as they arrive, 3D messages for a processed frame.

Keeps the node thin: its depth and camera_info callbacks hand messages here, and after the 2D
outputs of a colour frame it asks for that frame's 3D messages. A depth image that could never be
used (an encoding other than a depth one, more pixels than the node's ``max_image_pixels``, data
that does not hold its rows) is refused on arrival, so it takes no place in the buffer. Pairing
is by stamp (``stamp_pairing``), the math in ``depth``, the message building in
``messages_3d``.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from saom_ros import messages_3d
from saom_ros.depth import DEPTH_SCALES, DepthError, boxes_3d
from saom_ros.image_codec import check_image
from saom_ros.image_decode import MAX_IMAGE_PIXELS
from saom_ros.stamp_pairing import StampBuffer

# Appended to "no depth image within ..." when no depth of the colour frame's moment or later
# came in time: large depth samples over Fast DDS's defaults arrive up to ~1 s late.
LATE_DEPTH_HINT = ("; depth late? Large depth images need the shipped Fast DDS profile "
                   "(config/fastdds_large_images.xml) on the camera's and this node's processes: "
                   "see README, \"Frame delivery\"")

if TYPE_CHECKING:
    from saom_ros.everything import Instances


class DepthStage:
    """3D instances from depth paired by stamp within ``tolerance_s`` and the latest camera info."""

    def __init__(self, tolerance_s: float, publish_points: bool,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.tolerance_s = tolerance_s
        self.tolerance_ns = int(round(tolerance_s * 1e9))
        self.publish_points = publish_points
        self.max_pixels = max_pixels
        self._depth = StampBuffer()
        self._info: Optional[CameraInfo] = None
        self._lock = threading.Lock()

    def add_depth(self, msg: Image) -> None:
        """Buffer a depth image for pairing; DepthError saying why (and nothing buffered) for one
        of another encoding than 16UC1/mono16/32FC1, over ``max_pixels`` pixels, or whose
        step, size and data do not agree."""
        try:
            check_image(msg, self.max_pixels, tuple(DEPTH_SCALES))
        except ValueError as err:
            raise DepthError(f"depth image refused: {err}") from None
        self._depth.put(messages_3d.stamp_ns(msg.header), msg, len(msg.data))

    def set_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._info = msg

    def reset(self) -> None:
        """Forget buffered depth and camera info (the node stopped consuming frames)."""
        self._depth.clear()
        with self._lock:
            self._info = None

    def outputs(self, instances: Instances, ids: np.ndarray, header: Header
                ) -> tuple[bytes, Optional[PointCloud2]]:
        """The 3D detections (a serialized Detection3DArray, which ``Publisher.publish`` takes
        as it is) and the point cloud, if asked for, of the colour frame ``header`` whose
        instances are ``instances`` with ids ``ids``. ValueError saying why there are none: no
        depth paired, no or bad camera info, a depth image that cannot be used."""
        stamp = messages_3d.stamp_ns(header)
        # A depth frame of the same moment may still be on its way: wait for it up to the
        # tolerance (the 2D outputs are out already; only the next frame's start waits).
        depth = self._depth.nearest(stamp, self.tolerance_ns, wait_s=self.tolerance_s)
        if depth is None:
            newest = self._depth.newest_stamp()
            raise DepthError(
                "no depth image received yet" if newest is None else
                f"no depth image within {self.tolerance_ns / 1e9:g} s of the colour stamp "
                f"(newest depth is {(newest - stamp) / 1e9:+.3f} s from it)"
                + (LATE_DEPTH_HINT if newest < stamp else ""))
        with self._lock:
            info = self._info
        if info is None:
            raise DepthError("no camera info received yet")
        size = instances.instance_image.shape
        boxes = boxes_3d(instances.instance_image,
                         messages_3d.depth_image(depth, size, self.max_pixels),
                         messages_3d.intrinsics(info, size), with_points=self.publish_points,
                         encoding=depth.encoding)
        cloud = (messages_3d.point_cloud(boxes, ids, instances, header)
                 if self.publish_points else None)
        return messages_3d.serialized_detections_3d(boxes, ids, instances, header), cloud
