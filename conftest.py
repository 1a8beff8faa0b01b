"""Keep every ROS process the tests start on loopback: DDS discovery never leaves this machine."""
import os

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
