"""Pairing a colour frame with the depth frame of the same moment, by stamp. No ROS.

Depth frames are kept in a short buffer as they arrive; a colour frame is paired when it is
processed (after inference, so depth that arrives a little later than colour is still found) with
the buffered frame whose stamp is nearest, if within the tolerance. Nothing is queued for later:
colour frames the node drops (latest frame wins) never ask for their depth, and depth frames that
no processed colour frame asks for age out of the buffer.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Optional

# Depth frames kept: ~1 s of a 30 Hz camera, more than inference on a CPU lags behind.
DEPTH_FRAMES_KEPT = 32


class StampBuffer:
    """The last ``capacity`` items with their stamps (integer nanoseconds); thread-safe."""

    def __init__(self, capacity: int = DEPTH_FRAMES_KEPT) -> None:
        self._items: deque[tuple[int, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def put(self, stamp_ns: int, item: Any) -> None:
        with self._lock:
            self._items.append((stamp_ns, item))

    def nearest(self, stamp_ns: int, tolerance_ns: int) -> Optional[Any]:
        """The item whose stamp is nearest ``stamp_ns`` and at most ``tolerance_ns`` from it;
        None if there is none (the newest wins a tie: it is the camera's latest version)."""
        with self._lock:
            best, best_gap = None, tolerance_ns
            for stamp, item in self._items:
                gap = abs(stamp - stamp_ns)
                if gap <= best_gap:
                    best, best_gap = item, gap
            return best

    def newest_stamp(self) -> Optional[int]:
        """The stamp of the last item put, None if empty (for the warning when nothing pairs)."""
        with self._lock:
            return self._items[-1][0] if self._items else None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
