"""The camera subscription's QoS: reliable when every publisher offers it, else best-effort.

Why not always best-effort: a best-effort reader never asks for a lost fragment again, and a frame
larger than the publisher's Fast DDS shared-memory segment (512 KiB by default; 640x480 rgb8 is
900 KiB) loses fragments whenever the reader is a little late, so most large frames never arrive.
A reliable reader gets every frame of a reliable camera; it cannot match a best-effort one, so
``auto`` follows the publishers, as ``ros2 topic echo`` and rosbag2 do, and looks again every
time ``follow()`` is called (a camera that appears, goes or changes).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY_SETTINGS = ("auto", "reliable", "best_effort")
_FIXED = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}


def choose_reliability(setting: str, offered: Iterable[ReliabilityPolicy]) -> ReliabilityPolicy:
    """The reliability to subscribe with: ``setting`` unless ``auto``; then best-effort if any
    publisher offers only that (a reliable reader would not match it), else reliable."""
    if setting != "auto":
        return _FIXED[setting]
    if any(policy == ReliabilityPolicy.BEST_EFFORT for policy in offered):
        return ReliabilityPolicy.BEST_EFFORT
    return ReliabilityPolicy.RELIABLE


class FollowingSubscription:
    """A subscription whose reliability follows the topic's publishers (``auto``) or is fixed."""

    def __init__(self, node: Node, msg_type: Any, topic: str, callback: Callable[[Any], None],
                 setting: str, depth: int) -> None:
        self._node, self._msg_type, self._callback = node, msg_type, callback
        self._setting, self._depth = setting, depth
        self.topic = node.resolve_topic_name(topic)
        self._sub = None
        self.reliability = ReliabilityPolicy.RELIABLE
        self.follow()

    def _offered(self) -> list[ReliabilityPolicy]:
        return [info.qos_profile.reliability
                for info in self._node.get_publishers_info_by_topic(self.topic)]

    def follow(self) -> None:
        """Subscribe, or subscribe again if the publishers now call for another reliability."""
        wanted = choose_reliability(self._setting, self._offered())
        if self._sub is not None and wanted == self.reliability:
            return
        if self._sub is not None:
            self._node.destroy_subscription(self._sub)
            self._node.get_logger().info(
                f"{self.topic}: publishers changed; subscribing {wanted.name.lower()}")
        self.reliability = wanted
        qos = QoSProfile(depth=self._depth, history=HistoryPolicy.KEEP_LAST, reliability=wanted)
        self._sub = self._node.create_subscription(self._msg_type, self.topic, self._callback, qos)

    def destroy(self) -> None:
        if self._sub is not None:
            self._node.destroy_subscription(self._sub)
            self._sub = None

    @property
    def reliability_name(self) -> str:
        """``reliable`` or ``best_effort``, as the parameter spells them."""
        return self.reliability.name.lower()
