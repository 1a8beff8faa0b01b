"""Is the camera still sending? Silence since the last input frame as a diagnostics level.

No ROS here: times are plain seconds (``time.monotonic()``), levels have the values of
``diagnostic_msgs/DiagnosticStatus`` so the node can use them as they are.
"""
from __future__ import annotations

import enum


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
