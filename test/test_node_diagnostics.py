"""The /diagnostics status of segment_node from its counters, state and input watchdog."""
import math

from diagnostic_msgs.msg import DiagnosticStatus

from saom_ros.input_watchdog import Level
from saom_ros.node_diagnostics import FrameStats, frame_values, summary

QUIET = (Level.OK, "")


def test_the_window_resets_and_the_totals_stay() -> None:
    stats = FrameStats(received=5, processed=4, window_processed=4, window_malformed=1,
                       window_failed=1, window_without_3d=2, failed=1, without_3d=2,
                       latencies_ms=[1.0, 3.0], inference_ms=[2.0], points_decoded=[256])
    window = stats.next_window()
    assert (window.window_processed, window.latencies_ms, window.inference_ms) == (4, [1.0, 3.0], [2.0])
    assert window.points_decoded == [256]
    assert (window.window_failed, window.window_without_3d) == (1, 2)
    assert (stats.received, stats.processed, stats.failed, stats.without_3d) == (5, 4, 1, 2)
    assert (stats.window_processed, stats.window_malformed, stats.latencies_ms) == (0, 0, [])
    assert (stats.window_failed, stats.window_without_3d) == (0, 0)
    assert stats.points_decoded == []


def test_inactive_states_report_ok_unless_configure_failed() -> None:
    assert summary("inactive", None, FrameStats(), QUIET, "/cam") == (DiagnosticStatus.OK, "inactive")
    assert summary("unconfigured", "configure failed: no such file: x.pt", FrameStats(), QUIET,
                   "/cam") == (DiagnosticStatus.ERROR,
                               "unconfigured: configure failed: no such file: x.pt")


def test_malformed_input_warns_before_silence() -> None:
    silent = (Level.ERROR, "no image for 9.0 s")
    assert summary("active", None, FrameStats(window_malformed=2), silent, "/cam") == \
        (DiagnosticStatus.WARN, "2 malformed image(s) skipped")
    assert summary("active", None, FrameStats(), silent, "/cam") == \
        (DiagnosticStatus.ERROR, "/cam: no image for 9.0 s")
    assert summary("active", None, FrameStats(), QUIET, "/cam") == (DiagnosticStatus.OK, "ok")


def test_failed_frames_are_an_error_and_frames_without_3d_a_warning() -> None:
    both = FrameStats(window_failed=1, window_malformed=3, window_without_3d=2)
    assert summary("active", None, both, QUIET, "/cam") == \
        (DiagnosticStatus.ERROR, "processing failed on 1 frame(s)")
    assert summary("active", None, FrameStats(window_without_3d=2), QUIET, "/cam") == \
        (DiagnosticStatus.WARN, "2 frame(s) without 3D output")
    # A count from an earlier window alone says nothing about this one.
    assert summary("active", None, FrameStats(without_3d=5, failed=1), QUIET, "/cam") == \
        (DiagnosticStatus.OK, "ok")


def test_values_give_window_medians_rate_and_counters() -> None:
    stats = FrameStats(received=7, processed=6, malformed=1, failed=1, without_3d=2,
                       depth_refused=3, window_processed=3,
                       latencies_ms=[10.0, 30.0, 20.0], inference_ms=[5.0],
                       points_decoded=[256, 40, 36], frame_ages_ms=[12.34, 50.0, 3.0])
    values = frame_values(stats, 2.0, dropped=1, with_3d=True)
    assert values == {"latency_ms": "20.0", "inference_ms": "5.0", "points_decoded": "40.0",
                      "frame_age_ms": "12.3",
                      "processing_rate_hz": "1.50", "frames_received": "7",
                      "frames_processed": "6", "frames_dropped": "1", "frames_malformed": "1",
                      "frames_failed": "1", "frames_without_3d": "2", "depth_frames_refused": "3"}
    empty = frame_values(FrameStats(), 1.0, dropped=0, with_3d=False)
    assert empty["latency_ms"] == "nan" and "frames_without_3d" not in empty
    assert "depth_frames_refused" not in empty
    assert math.isnan(float(empty["frame_age_ms"]))


def test_the_frame_age_is_of_the_window_s_frames_only() -> None:
    """A camera that stopped (or a node deactivated) shows no age, not the last frame's."""
    stats = FrameStats(processed=1, window_processed=1, frame_ages_ms=[40.0])
    assert frame_values(stats.next_window(), 1.0, 0, False)["frame_age_ms"] == "40.0"
    assert frame_values(stats.next_window(), 1.0, 0, False)["frame_age_ms"] == "nan"
    assert stats.processed == 1


def test_a_failed_transition_is_an_error_while_not_active() -> None:
    assert summary("inactive", "activate failed: RuntimeError: x", FrameStats(), QUIET,
                   "/cam") == (DiagnosticStatus.ERROR, "inactive: activate failed: RuntimeError: x")


def test_a_stalled_pipeline_warns_unless_the_camera_is_gone() -> None:
    stalled = (Level.WARN, "stalled: one frame in processing for 7.0 s (over 5 s), 30 image(s) "
                           "received meanwhile")
    assert summary("active", None, FrameStats(), QUIET, "/cam", stalled) == \
        (DiagnosticStatus.WARN, stalled[1])
    assert summary("active", None, FrameStats(), (Level.WARN, "no image for 1.5 s"), "/cam",
                   stalled) == (DiagnosticStatus.WARN, stalled[1])
    assert summary("active", None, FrameStats(), (Level.ERROR, "no image for 9.0 s"), "/cam",
                   stalled) == (DiagnosticStatus.ERROR, "/cam: no image for 9.0 s")
    assert summary("active", None, FrameStats(window_malformed=1), QUIET, "/cam", stalled) == \
        (DiagnosticStatus.WARN, "1 malformed image(s) skipped")


def test_count_adds_to_the_total_and_the_window() -> None:
    stats = FrameStats(malformed=2)
    for kind in ("malformed", "failed", "without_3d", "depth_refused"):
        stats.count(kind)
    assert (stats.malformed, stats.window_malformed, stats.failed, stats.window_failed) == \
        (3, 1, 1, 1)
    assert (stats.without_3d, stats.window_without_3d, stats.depth_refused,
            stats.window_depth_refused) == (1, 1, 1, 1)


def test_refused_depth_images_warn() -> None:
    assert summary("active", None, FrameStats(window_depth_refused=4, depth_refused=9), QUIET,
                   "/cam") == (DiagnosticStatus.WARN, "4 depth image(s) refused")
    stats = FrameStats(depth_refused=9, window_depth_refused=4)
    stats.next_window()
    assert (stats.depth_refused, stats.window_depth_refused) == (9, 0)
