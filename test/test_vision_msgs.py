"""The fallback vision_msgs: upstream 4.x field lists, and messages crossing processes over DDS."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
import vision_msgs.msg as vm

from ros_domain import unique_domain_id
import vision_msgs_publisher

# Upstream vision_msgs 4.x (Humble, Jazzy, Kilted), field for field, in order.
UPSTREAM_FIELDS = {
    "Point2D": {"x": "double", "y": "double"},
    "Pose2D": {"position": "vision_msgs/Point2D", "theta": "double"},
    "BoundingBox2D": {"center": "vision_msgs/Pose2D", "size_x": "double", "size_y": "double"},
    "ObjectHypothesis": {"class_id": "string", "score": "double"},
    "ObjectHypothesisWithPose": {"hypothesis": "vision_msgs/ObjectHypothesis",
                                 "pose": "geometry_msgs/PoseWithCovariance"},
    "Detection2D": {"header": "std_msgs/Header",
                    "results": "sequence<vision_msgs/ObjectHypothesisWithPose>",
                    "bbox": "vision_msgs/BoundingBox2D", "id": "string"},
    "Detection2DArray": {"header": "std_msgs/Header",
                         "detections": "sequence<vision_msgs/Detection2D>"},
    "VisionClass": {"class_id": "uint16", "class_name": "string"},
    "LabelInfo": {"header": "std_msgs/Header", "class_map": "sequence<vision_msgs/VisionClass>",
                  "threshold": "float"},
    "VisionInfo": {"header": "std_msgs/Header", "method": "string",
                   "database_location": "string", "database_version": "int32"},
    "BoundingBox3D": {"center": "geometry_msgs/Pose", "size": "geometry_msgs/Vector3"},
    "BoundingBox3DArray": {"header": "std_msgs/Header",
                           "boxes": "sequence<vision_msgs/BoundingBox3D>"},
    "Detection3D": {"header": "std_msgs/Header",
                    "results": "sequence<vision_msgs/ObjectHypothesisWithPose>",
                    "bbox": "vision_msgs/BoundingBox3D", "id": "string"},
    "Detection3DArray": {"header": "std_msgs/Header",
                         "detections": "sequence<vision_msgs/Detection3D>"},
}

# RIHS01 type hashes of upstream vision_msgs 4.1.1, obtained by generating its own .msg files
# with the Kilted rosidl wheels; equal hashes are what lets our messages talk to real ROS 2 nodes.
UPSTREAM_HASHES = {
    "BoundingBox3D": "bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "BoundingBox3DArray": "a81938db9576b10c2eecd7c5a5da3eac496efd00221b25ed051dfbc81fb56da6",
    "Detection2D": "0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "Detection2DArray": "214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "Detection3D": "ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "Detection3DArray": "793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
    "LabelInfo": "3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_FIELDS))
def test_fields_match_upstream(name):
    fields = getattr(vm, name).get_fields_and_field_types()
    assert list(fields.items()) == list(UPSTREAM_FIELDS[name].items())


def test_every_shipped_message_is_checked():
    shipped = {p.stem for p in (Path(__file__).parents[1] / "ros_interfaces/vision_msgs/msg").glob("*.msg")}
    assert shipped == set(UPSTREAM_FIELDS)


@pytest.fixture
def ros_node(monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(unique_domain_id()))
    rclpy.init()
    node = rclpy.create_node("vision_msgs_test")
    yield node
    node.destroy_node()
    rclpy.shutdown()


@pytest.mark.parametrize("name", sorted(UPSTREAM_HASHES))
def test_type_hash_matches_upstream(ros_node, name):
    topic = f"hash_{name.lower()}"
    ros_node.create_publisher(getattr(vm, name), topic, 1)
    (info,) = ros_node.get_publishers_info_by_topic(topic)
    assert str(info.topic_type_hash) == f"RIHS01_{UPSTREAM_HASHES[name]}"


@pytest.fixture
def publisher_process(ros_node):
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("vision_msgs_publisher.py"))],
                            env=dict(os.environ))
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


def receive(node, msg_type, topic, qos, timeout=20.0):
    """Spin until the first message on ``topic`` arrives; return it and drop the subscription."""
    received = []
    sub = node.create_subscription(msg_type, topic, received.append, qos)
    deadline = time.monotonic() + timeout
    while not received and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_subscription(sub)
    assert received, f"nothing received on {topic} within {timeout} s"
    return received[0]


LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     reliability=ReliabilityPolicy.RELIABLE)


def test_messages_cross_processes_intact(ros_node, publisher_process):
    got = receive(ros_node, vm.Detection2DArray, "detections", 10)
    assert got == vision_msgs_publisher.detections()
    assert (got.header.stamp.sec, got.header.stamp.nanosec, got.header.frame_id) == (42, 123456789, "camera")
    assert receive(ros_node, vm.LabelInfo, "label_info", LATCHED) == vision_msgs_publisher.label_info()


def test_late_subscriber_gets_label_info(ros_node, publisher_process):
    receive(ros_node, vm.Detection2DArray, "detections", 10)  # the publisher is up and has latched
    time.sleep(1.0)
    late = receive(ros_node, vm.LabelInfo, "label_info", LATCHED)
    assert [(c.class_id, c.class_name) for c in late.class_map] == [(0, "unlabelled"), (1, "Mug"), (2, "Sofa")]
