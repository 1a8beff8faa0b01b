"""Publishes one Detection2DArray and a transient-local LabelInfo, then spins until killed.

Run as a separate process by test_vision_msgs.py, so messages cross a real DDS process boundary.
"""
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from vision_msgs.msg import (Detection2D, Detection2DArray, LabelInfo, ObjectHypothesisWithPose,
                             VisionClass)


def detections() -> Detection2DArray:
    msg = Detection2DArray()
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 42, 123456789, "camera"
    for i in range(3):
        det = Detection2D()
        det.header = msg.header
        det.id = str(i + 1)
        det.bbox.center.position.x, det.bbox.center.position.y = 10.5 + i, 20.25 * i
        det.bbox.center.theta = 0.0
        det.bbox.size_x, det.bbox.size_y = 4.0 + i, 8.0
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = str(7 + i), 0.5 + 0.1 * i
        hyp.pose.pose.position.x = float(i)
        det.results.append(hyp)
        msg.detections.append(det)
    return msg


def label_info() -> LabelInfo:
    msg = LabelInfo()
    msg.header.frame_id = "camera"
    msg.class_map = [VisionClass(class_id=i, class_name=n) for i, n in enumerate(["unlabelled", "Mug", "Sofa"])]
    msg.threshold = 0.5
    return msg


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("vision_msgs_publisher")
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         reliability=ReliabilityPolicy.RELIABLE)
    node.create_publisher(LabelInfo, "label_info", latched).publish(label_info())
    det_pub = node.create_publisher(Detection2DArray, "detections", 10)
    node.create_timer(0.1, lambda: det_pub.publish(detections()))
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
