"""input_qos: the camera subscription follows its publishers' reliability (in process, real DDS)."""
from __future__ import annotations

import time

import pytest
import rclpy
from rclpy.context import Context
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ros_domain import unique_domain_id
from saom_ros.input_qos import FollowingSubscription, choose_reliability

RELIABLE, BEST_EFFORT = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT


@pytest.mark.parametrize("setting, offered, expected", [
    ("auto", [], RELIABLE),  # nobody yet: reliable, the first best-effort camera switches it
    ("auto", [RELIABLE, RELIABLE], RELIABLE),
    ("auto", [RELIABLE, BEST_EFFORT], BEST_EFFORT),  # the only QoS that matches both
    ("reliable", [BEST_EFFORT], RELIABLE),
    ("best_effort", [RELIABLE], BEST_EFFORT),
])
def test_choose_reliability(setting, offered, expected):
    assert choose_reliability(setting, offered) == expected


@pytest.fixture
def node():
    ctx = Context()
    rclpy.init(context=ctx, domain_id=120 + unique_domain_id())
    node = rclpy.create_node("qos_test", context=ctx)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=ctx)


def _wait(node, done, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not done():
        rclpy.spin_once(node, timeout_sec=0.05)
    return done()


def test_auto_follows_publishers_as_they_come_and_go(node):
    sub = FollowingSubscription(node, Image, "cam", lambda msg: None, "auto", 1)
    assert sub.topic == "/cam" and sub.reliability == RELIABLE
    camera = node.create_publisher(Image, "/cam", QoSProfile(depth=1, reliability=BEST_EFFORT))

    def following(policy):
        sub.follow()
        return sub.reliability == policy

    assert _wait(node, lambda: following(BEST_EFFORT))
    node.destroy_publisher(camera)
    node.create_publisher(Image, "/cam", QoSProfile(depth=1, reliability=RELIABLE))
    assert _wait(node, lambda: following(RELIABLE))
    assert sub.reliability_name == "reliable"
    (info,) = node.get_subscriptions_info_by_topic("/cam")  # one subscription, re-created
    assert info.qos_profile.reliability == RELIABLE
    sub.destroy()
    assert not node.get_subscriptions_info_by_topic("/cam")
