"""input_watchdog: OK while frames come, WARN after a silent window, ERROR after the timeout;
WARN while one frame has been in processing longer than the timeout (a stalled pipeline)."""
import pytest

from saom_ros.input_watchdog import InputWatchdog, Level, StallWatch


def test_a_camera_that_stops_goes_warn_then_error_and_recovers():
    dog = InputWatchdog(timeout_s=5.0, now=100.0)
    for t in (100.2, 100.4, 101.0, 101.9):
        dog.frame(t)
        assert dog.check(t + 0.5, window_s=1.0) == (Level.OK, "")
    assert dog.check(103.0, window_s=1.0) == (Level.WARN, "no image for 1.1 s")
    level, text = dog.check(106.9, window_s=1.0)
    assert level == Level.ERROR and text.startswith("no image for 5.0 s (input_timeout 5 s)")
    dog.frame(200.0)
    assert dog.check(200.3, window_s=1.0) == (Level.OK, "")


def test_silence_counts_from_subscribing_until_the_first_frame():
    dog = InputWatchdog(timeout_s=3.0, now=0.0)
    assert dog.check(0.9, window_s=1.0)[0] == Level.OK
    assert dog.check(2.0, window_s=1.0) == (
        Level.WARN, "no image received in the 2.0 s since subscribing")
    assert dog.check(3.5, window_s=1.0)[0] == Level.ERROR
    dog.start(10.0)  # deactivated and activated again: a fresh start
    assert dog.check(10.5, window_s=1.0)[0] == Level.OK


def test_a_longer_report_window_tolerates_a_longer_gap():
    dog = InputWatchdog(timeout_s=10.0, now=0.0)
    dog.frame(1.0)
    assert dog.check(2.5, window_s=1.0)[0] == Level.WARN
    assert dog.check(2.5, window_s=2.0)[0] == Level.OK


def test_levels_are_diagnostic_status_levels():
    from diagnostic_msgs.msg import DiagnosticStatus
    assert (Level.OK, Level.WARN, Level.ERROR) == (
        DiagnosticStatus.OK[0], DiagnosticStatus.WARN[0], DiagnosticStatus.ERROR[0])


def test_the_timeout_must_be_positive():
    with pytest.raises(ValueError, match="input timeout"):
        InputWatchdog(timeout_s=0.0, now=0.0)


def test_a_frame_in_processing_past_the_timeout_is_a_stall():
    stall = StallWatch(timeout_s=5.0)
    assert stall.check(100.0) == (Level.OK, "")  # idle
    stall.started(100.0)
    for _ in range(12):
        stall.arrived()
    assert stall.check(104.9) == (Level.OK, "")
    assert stall.check(107.0) == (Level.WARN, "stalled: one frame in processing for 7.0 s "
                                              "(over 5 s), 12 image(s) received meanwhile")
    stall.finished()
    assert stall.check(120.0) == (Level.OK, "")
    stall.started(121.0)  # the next frame: its own time and arrivals
    assert stall.check(126.5) == (Level.WARN, "stalled: one frame in processing for 5.5 s "
                                              "(over 5 s), 0 image(s) received meanwhile")
    with pytest.raises(ValueError, match="stall timeout"):
        StallWatch(timeout_s=0.0)
