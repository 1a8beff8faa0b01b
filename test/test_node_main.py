"""The segment_node process (node_main): start-up failures exit non-zero naming the cause, and
a running node stops cleanly (exit 0, no traceback) on any number of SIGINT and on SIGTERM, also
while a frame is in inference and from the moment it is active."""
from __future__ import annotations

import signal
import sys
import time

import pytest

from ros_helpers import FAST_ENGINE, ROOT, Listener, NodeProcess, camera_image, run_node
from saom_ros.image_codec import array_to_image
from test_segment_node import START_TIMEOUT, checkpoint, header, request, ros  # noqa: F401 (fixtures)


@pytest.mark.parametrize("command", [
    None,  # saom-segment
    [sys.executable, str(ROOT / "scripts" / "lib" / "segment_node")],  # what ros2 run starts
], ids=["saom-segment", "lib-saom_ros-segment_node"])
def test_missing_checkpoint_makes_the_process_exit_nonzero_naming_the_file(tmp_path, command):
    missing = tmp_path / "no_such_model.pt"
    result = run_node({"checkpoint": missing}, command)
    assert result.returncode != 0
    assert str(missing) in result.stdout + result.stderr



@pytest.mark.parametrize("signals", [
    pytest.param((signal.SIGINT,), marks=pytest.mark.slow, id="INT"),
    pytest.param((signal.SIGINT,) * 3, id="INTx3"),  # a non-interactive launch stopping twice+
    pytest.param((signal.SIGTERM,), marks=pytest.mark.slow, id="TERM"),
    pytest.param((signal.SIGTERM, signal.SIGINT, signal.SIGTERM), id="TERM-INT-TERM"),
])
def test_signals_stop_the_node_cleanly(ros, checkpoint, tmp_path, signals):
    proc = NodeProcess(tmp_path, {"checkpoint": checkpoint, **FAST_ENGINE, "points_per_side": 8},
                       {"image": "/cam/stop", "__ns": "/stop"})
    lis = Listener("/cam/stop", node="/stop/segment_node")
    try:
        assert lis.wait_for_subscriber(START_TIMEOUT, proc), proc.output
        request(lis, array_to_image(camera_image(1), "rgb8", header(1)), proc)
        big = array_to_image(camera_image(2, 480, 640), "rgb8", header(2))
        lis.pub.publish(big)  # inference in flight while the signals arrive
        lis.spin_until(lambda: False, 0.3)
        for sig in signals:
            proc.proc.send_signal(sig)
            time.sleep(0.1)
        code = proc.proc.wait(timeout=60)
    finally:
        lis.close()
        proc.stop()
    assert code == 0, proc.output
    assert "Traceback" not in proc.output and "KeyboardInterrupt" not in proc.output, proc.output


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_stream_of_signals_from_start_up_on_exits_cleanly(ros, checkpoint, tmp_path, sig):
    """Signals every few milliseconds from the moment the node is active: one lands between
    activation and the first wait, between two waits, or while Python finalises."""
    proc = NodeProcess(tmp_path, {"checkpoint": checkpoint, **FAST_ENGINE, "points_per_side": 4},
                       {"image": "/cam/storm", "__ns": "/storm"})
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "active:" not in proc.output:
            assert time.monotonic() < deadline and proc.alive(), proc.output
            time.sleep(0.002)
        end = time.monotonic() + 10
        while proc.alive() and time.monotonic() < end:
            proc.proc.send_signal(sig)
            time.sleep(0.005)
        code = proc.proc.wait(timeout=60)
    finally:
        proc.stop()
    assert code == 0, proc.output
    assert "Traceback" not in proc.output and "KeyboardInterrupt" not in proc.output, proc.output
