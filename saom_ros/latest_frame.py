"""A one-slot buffer between the camera callback and the inference thread: latest frame wins."""
from __future__ import annotations

import threading
from typing import Any


class LatestFrame:
    """``put`` never blocks and replaces a frame nobody took (counted as a drop)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            self.dropped += self._item is not None
            self._item = item
            self._cond.notify()

    def take(self) -> Any:
        """The newest item, waiting for one; None once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed)
            item, self._item = self._item, None
            return None if self._closed else item

    def discard(self) -> None:
        """Forget a frame nobody took (not counted as a drop)."""
        with self._cond:
            self._item = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
