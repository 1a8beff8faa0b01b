"""A private ROS domain per test process, so concurrent test runs never see each other."""
import os


def unique_domain_id() -> int:
    """A domain id in 1..100 derived from this process id (Fast DDS supports 0..232)."""
    return 1 + os.getpid() % 100
