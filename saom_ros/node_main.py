"""The segment_node process: signals, rclpy, autostart, spinning, exit status.

``main`` is what ``ros2 run saom_ros segment_node``, ``saom-segment`` and launch start; the node
itself (``segment_node.SegmentNode``) knows nothing of the process it runs in.
"""
from __future__ import annotations

import signal
import sys
from typing import Any, Optional

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import TransitionCallbackReturn

from saom_ros.malloc_settings import keep_freed_memory
from saom_ros.segment_node import NODE_NAME, SegmentNode


def start(node: SegmentNode) -> bool:
    """Configure and activate ``node``; False (the reason logged) if either fails."""
    return (node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            and node.trigger_activate() == TransitionCallbackReturn.SUCCESS)


def _stop_quietly(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: rclpy's own handler, which runs first, has shut the context down, so spin
    returns and main cleans up. Python's default (raising KeyboardInterrupt) would break into
    that clean-up when a second signal comes, as a non-interactive ``ros2 launch`` sends it."""


def main(args: Optional[list[str]] = None) -> int:
    """Run the node until shut down (exit 0, also on any number of SIGINT/SIGTERM); exit status 1
    if it cannot start (autostart)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_quietly)
    try:
        return _run(args)
    finally:
        # Stopped: more signals of the same stop must not kill the exiting process (exit -2
        # instead of 0), and Python resets handlers that are functions to the default while it
        # finalises; an ignored signal stays ignored.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _run(args: Optional[list[str]]) -> int:
    """main without the signal set-up: the exit status."""
    keep_freed_memory()  # this process's frames then reuse memory instead of page-faulting
    rclpy.init(args=args)
    # Made while the context is valid: a signal during start-up then only ends the spin (rclpy's
    # lazily made executor cannot be created once a signal has shut the context down).
    executor = SingleThreadedExecutor()
    try:
        node = SegmentNode()
    except ParameterException as err:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        return 1
    if node.params["autostart"] and not start(node) and rclpy.ok():  # not ok: stopped meanwhile
        node.get_logger().fatal(f"cannot start: {node.transition_failure or 'start-up failed'}")
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
        return 1
    try:
        executor.add_node(node)
        executor.spin()
    except ExternalShutdownException:  # a signal, or the context shut down otherwise
        pass
    except _rclpy.RCLError:
        # A signal that shuts the context down just before the executor makes its next wait set
        # (during start-up, or between two waits) fails that call instead of ending the spin.
        if rclpy.ok():
            raise
    finally:
        node.close()
        node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
