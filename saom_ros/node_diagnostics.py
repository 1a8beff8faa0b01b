"""segment_node's /diagnostics: frame counters, per-window times, and the status they give.

Plain values in, the level, message and key-value strings of a ``DiagnosticStatus`` out; the
node gathers the numbers and publishes.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Optional

from diagnostic_msgs.msg import DiagnosticStatus

from saom_ros.input_watchdog import Level


@dataclasses.dataclass
class FrameStats:
    """Counts since start and per-frame times since the last /diagnostics report."""

    received: int = 0
    processed: int = 0
    malformed: int = 0
    failed: int = 0  # frames whose processing raised something other than a bad-input error
    without_3d: int = 0  # processed frames that got no ~/detections_3d (use_depth)
    window_processed: int = 0
    window_malformed: int = 0
    window_failed: int = 0
    window_without_3d: int = 0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    inference_ms: list[float] = dataclasses.field(default_factory=list)
    points_decoded: list[int] = dataclasses.field(default_factory=list)  # prompts per frame
    frame_age_ms: float = float("nan")

    def next_window(self) -> "FrameStats":
        """A copy of these stats, and reset the per-window part."""
        snapshot = dataclasses.replace(self)
        self.window_processed = self.window_malformed = 0
        self.window_failed = self.window_without_3d = 0
        self.latencies_ms, self.inference_ms, self.points_decoded = [], [], []
        return snapshot


def summary(state: str, configure_error: Optional[str], stats: FrameStats,
            silence: tuple[Level, str], input_topic: str) -> tuple[bytes, str]:
    """The status level and message: the lifecycle state while not active (ERROR with the reason
    after a failed configure); when active, failed frames (ERROR), malformed input (WARN) and
    frames without 3D output (WARN), in that order, before input silence."""
    if state != "active":
        if configure_error:
            return DiagnosticStatus.ERROR, f"{state}: {configure_error}"
        return DiagnosticStatus.OK, state
    if stats.window_failed:
        return DiagnosticStatus.ERROR, f"processing failed on {stats.window_failed} frame(s)"
    if stats.window_malformed:
        return DiagnosticStatus.WARN, f"{stats.window_malformed} malformed image(s) skipped"
    if stats.window_without_3d:
        return DiagnosticStatus.WARN, f"{stats.window_without_3d} frame(s) without 3D output"
    if silence[0] != Level.OK:
        return bytes([silence[0]]), f"{input_topic}: {silence[1]}"
    return DiagnosticStatus.OK, "ok"


def frame_values(stats: FrameStats, elapsed_s: float, dropped: int,
                 with_3d: bool) -> dict[str, str]:
    """The per-frame key-values: window medians, the processing rate and the counters."""
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.1f}" if values else "nan"

    return {
        "latency_ms": median(stats.latencies_ms),
        "inference_ms": median(stats.inference_ms),
        "points_decoded": median(stats.points_decoded),
        "frame_age_ms": f"{stats.frame_age_ms:.1f}",
        "processing_rate_hz": f"{stats.window_processed / elapsed_s:.2f}",
        "frames_received": str(stats.received),
        "frames_processed": str(stats.processed),
        "frames_dropped": str(dropped),
        "frames_malformed": str(stats.malformed),
        "frames_failed": str(stats.failed),
        **({"frames_without_3d": str(stats.without_3d)} if with_3d else {}),
    }
