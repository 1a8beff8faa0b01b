"""Is the camera still sending, and is the node still answering? Silence since the last input
frame, and time spent on the frame in hand, as diagnostics levels.

No ROS here: times are plain seconds (``time.monotonic()``), levels have the values of
``diagnostic_msgs/DiagnosticStatus`` so the node can use them as they are.
"""
from __future__ import annotations

import enum
import threading
from typing import Optional


class Level(enum.IntEnum):
    """diagnostic_msgs/DiagnosticStatus levels."""

    OK = 0
    WARN = 1
    ERROR = 2


class InputWatchdog:
    """WARN when no frame arrived in the last report window, ERROR after ``timeout_s`` of silence.

    Silence counts from the last frame, or from :meth:`start` (subscribing) if none came since;
    a frame makes it OK again at once.
    """

    def __init__(self, timeout_s: float, now: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"input timeout must be > 0 s, got {timeout_s}")
        self.timeout_s = timeout_s
        self.start(now)

    def start(self, now: float) -> None:
        """Begin watching (the input was just subscribed)."""
        self._last, self._any = now, False

    def frame(self, now: float) -> None:
        """A frame arrived (malformed ones too: the camera is alive)."""
        self._last, self._any = now, True

    def check(self, now: float, window_s: float) -> tuple[Level, str]:
        """The level, and what is wrong ("" when OK), for the report window ending ``now``."""
        silence = now - self._last
        if silence <= window_s:
            return Level.OK, ""
        what = (f"no image for {silence:.1f} s" if self._any
                else f"no image received in the {silence:.1f} s since subscribing")
        if silence < self.timeout_s:
            return Level.WARN, what
        return Level.ERROR, f"{what} (input_timeout {self.timeout_s:g} s): is the camera running?"


class StallWatch:
    """WARN while one frame has been in processing for more than ``timeout_s``: a stalled
    pipeline (a decoder or model that takes far longer than usual) answers nothing, however many
    images arrive meanwhile. Thread-safe: the worker reports, the diagnostics timer checks."""

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"stall timeout must be > 0 s, got {timeout_s}")
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._since: Optional[float] = None  # when the frame in hand was taken
        self._arrived = 0  # images received since then

    def started(self, now: float) -> None:
        """The worker took a frame."""
        with self._lock:
            self._since, self._arrived = now, 0

    def finished(self) -> None:
        """The worker is done with its frame (published, refused or failed)."""
        with self._lock:
            self._since = None

    def arrived(self) -> None:
        """An image arrived (it waits, or replaces the one waiting)."""
        with self._lock:
            self._arrived += 1

    def check(self, now: float) -> tuple[Level, str]:
        """WARN, and what is wrong, while the frame in hand is older than ``timeout_s``."""
        with self._lock:
            since, arrived = self._since, self._arrived
        if since is None or now - since <= self.timeout_s:
            return Level.OK, ""
        return Level.WARN, (f"stalled: one frame in processing for {now - since:.1f} s "
                            f"(over {self.timeout_s:g} s), {arrived} image(s) received meanwhile")
