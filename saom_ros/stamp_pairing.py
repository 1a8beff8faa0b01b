"""Pairing a colour frame with the depth frame of the same moment, by stamp. No ROS.

Depth frames are kept in a short buffer (bounded in frames and in bytes) as they arrive; a colour
frame is paired when it is processed (after inference, so depth that arrives a little later than
colour is still found) with the buffered frame whose stamp is nearest, if within the tolerance.
While depth is arriving but none stamped at or after the colour frame is in yet, the pairing waits
a bounded time for it: the frame of the same moment may be on its way, and an older one within the
tolerance would be taken instead. Nothing is queued for later: colour frames the node drops
(latest frame wins) never ask for their depth, and depth frames that no processed colour frame
asks for age out of the buffer.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Optional

# Depth frames kept: ~1 s of a 30 Hz camera, more than inference on a CPU lags behind...
DEPTH_FRAMES_KEPT = 32
# ...and at most this many bytes of them (the newest frame is always kept): 32 frames of
# 1280x720 fit in either depth encoding (16UC1 56 MiB, 32FC1 112 MiB); of 2048x2048 32FC1
# (16 MiB each) the last 8.
DEPTH_BYTES_KEPT = 128 * 1024 * 1024
# Depth counts as arriving when the last frame came within this many seconds; a stopped depth
# stream then costs the colour frames no waiting.
ARRIVING_S = 1.0


class StampBuffer:
    """The last ``capacity`` items with their stamps (integer nanoseconds), at most ``max_bytes``
    of them by the sizes given to :meth:`put` (the newest is kept whatever its size);
    thread-safe."""

    def __init__(self, capacity: int = DEPTH_FRAMES_KEPT, max_bytes: int = DEPTH_BYTES_KEPT
                 ) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self._items: deque[tuple[int, Any, int]] = deque()  # stamp, item, size
        self._bytes = 0
        self._arrived = float("-inf")  # time.monotonic() of the last put
        self._changed = threading.Condition()

    def put(self, stamp_ns: int, item: Any, size: int = 0) -> None:
        """Keep ``item`` of ``size`` bytes, dropping the oldest ones beyond the limits."""
        with self._changed:
            self._items.append((stamp_ns, item, size))
            self._bytes += size
            while len(self._items) > self.capacity or (
                    self._bytes > self.max_bytes and len(self._items) > 1):
                self._bytes -= self._items.popleft()[2]
            self._arrived = time.monotonic()
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)

    @property
    def bytes(self) -> int:
        """The sizes of the items kept, summed."""
        with self._changed:
            return self._bytes

    def nearest(self, stamp_ns: int, tolerance_ns: int, wait_s: float = 0.0) -> Optional[Any]:
        """The item whose stamp is nearest ``stamp_ns`` and at most ``tolerance_ns`` from it;
        None if there is none (on a tie the later stamp wins, then the later arrival: the
        camera's latest version). While items are arriving (ARRIVING_S) but none is stamped at
        or after ``stamp_ns``, waits up to ``wait_s`` for one."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while (self._items and self._newest() < stamp_ns
                   and time.monotonic() - self._arrived < ARRIVING_S):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            best, best_key = None, None
            for stamp, item, _ in self._items:  # in arrival order: ">=" lets the later one win
                gap = abs(stamp - stamp_ns)
                key = (-gap, stamp)
                if gap <= tolerance_ns and (best_key is None or key >= best_key):
                    best, best_key = item, key
            return best

    def newest_stamp(self) -> Optional[int]:
        """The latest stamp in the buffer, None if empty (for the warning when nothing pairs)."""
        with self._changed:
            return self._newest() if self._items else None

    def _newest(self) -> int:
        return max(stamp for stamp, _, _ in self._items)

    def clear(self) -> None:
        with self._changed:
            self._items.clear()
            self._bytes = 0
