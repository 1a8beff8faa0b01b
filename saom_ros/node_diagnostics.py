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
    depth_refused: int = 0  # depth images refused on arrival (use_depth)
    window_processed: int = 0
    window_malformed: int = 0
    window_failed: int = 0
    window_without_3d: int = 0
    window_depth_refused: int = 0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    inference_ms: list[float] = dataclasses.field(default_factory=list)
    points_decoded: list[int] = dataclasses.field(default_factory=list)  # prompts per frame
    # now - stamp when each frame's outputs were out: of this window's frames only, so a camera
    # that stopped (or a node that stopped segmenting) shows no age rather than an old one
    frame_ages_ms: list[float] = dataclasses.field(default_factory=list)

    def count(self, kind: str) -> None:
        """One more frame of ``kind`` (malformed, failed, without_3d, depth_refused): in the
        total and in this window."""
        setattr(self, kind, getattr(self, kind) + 1)
        setattr(self, f"window_{kind}", getattr(self, f"window_{kind}") + 1)

    def next_window(self) -> "FrameStats":
        """A copy of these stats, and reset the per-window part."""
        snapshot = dataclasses.replace(self)
        self.window_processed = self.window_malformed = 0
        self.window_failed = self.window_without_3d = self.window_depth_refused = 0
        self.latencies_ms, self.inference_ms, self.points_decoded = [], [], []
        self.frame_ages_ms = []
        return snapshot


def summary(state: str, failure: Optional[str], stats: FrameStats,
            silence: tuple[Level, str], input_topic: str,
            stall: tuple[Level, str] = (Level.OK, "")) -> tuple[bytes, str]:
    """The status level and message: the lifecycle state while not active (ERROR with the reason
    after a failed transition, ``failure``); when active, the first that applies: failed frames
    (ERROR), malformed input (WARN), frames without 3D output (WARN), refused depth images
    (WARN), input silence past the timeout (ERROR), a stalled pipeline (``stall``, WARN), a
    report window without input (WARN)."""
    if state != "active":
        if failure:
            return DiagnosticStatus.ERROR, f"{state}: {failure}"
        return DiagnosticStatus.OK, state
    if stats.window_failed:
        return DiagnosticStatus.ERROR, f"processing failed on {stats.window_failed} frame(s)"
    if stats.window_malformed:
        return DiagnosticStatus.WARN, f"{stats.window_malformed} malformed image(s) skipped"
    if stats.window_without_3d:
        return DiagnosticStatus.WARN, f"{stats.window_without_3d} frame(s) without 3D output"
    if stats.window_depth_refused:
        return DiagnosticStatus.WARN, f"{stats.window_depth_refused} depth image(s) refused"
    if silence[0] == Level.ERROR:
        return DiagnosticStatus.ERROR, f"{input_topic}: {silence[1]}"
    if stall[0] != Level.OK:
        return bytes([stall[0]]), stall[1]
    if silence[0] != Level.OK:
        return bytes([silence[0]]), f"{input_topic}: {silence[1]}"
    return DiagnosticStatus.OK, "ok"


def frame_values(stats: FrameStats, elapsed_s: float, dropped: int,
                 with_3d: bool) -> dict[str, str]:
    """The per-frame key-values: window medians ("nan" when the window processed no frame),
    the processing rate and the counters."""
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.1f}" if values else "nan"

    return {
        "latency_ms": median(stats.latencies_ms),
        "inference_ms": median(stats.inference_ms),
        "points_decoded": median(stats.points_decoded),
        "frame_age_ms": median(stats.frame_ages_ms),
        "processing_rate_hz": f"{stats.window_processed / elapsed_s:.2f}",
        "frames_received": str(stats.received),
        "frames_processed": str(stats.processed),
        "frames_dropped": str(dropped),
        "frames_malformed": str(stats.malformed),
        "frames_failed": str(stats.failed),
        **({"frames_without_3d": str(stats.without_3d),
            "depth_frames_refused": str(stats.depth_refused)} if with_3d else {}),
    }
