"""latest_frame: the one-slot buffer between the camera callback and the inference thread."""
from __future__ import annotations

import threading
import time

from saom_ros.latest_frame import LatestFrame


def test_latest_frame_keeps_the_newest_and_counts_drops():
    slot = LatestFrame()
    for i in range(5):
        slot.put(i)  # never waits, nobody is taking
    assert slot.take() == 4 and slot.dropped == 4
    slot.put(5)
    assert slot.take() == 5 and slot.dropped == 4


def test_latest_frame_take_waits_for_a_frame_and_close_releases_it():
    slot, got = LatestFrame(), []

    def consume():
        got.append(slot.take())
        got.append(slot.take())  # waits until close()

    worker = threading.Thread(target=consume)
    worker.start()
    slot.put("frame")
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    slot.close()
    worker.join(timeout=10)
    assert got == ["frame", None] and not worker.is_alive()
