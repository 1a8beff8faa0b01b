"""stamp_pairing: nearest stamp within the tolerance, bounded buffer, waiting for a frame of the
same moment that is on its way."""
import contextlib
import threading

from saom_ros.stamp_pairing import StampBuffer


def test_nearest_within_tolerance():
    buffer = StampBuffer(capacity=4)
    assert buffer.nearest(100, 10) is None and buffer.newest_stamp() is None
    for stamp in (100, 200, 300):
        buffer.put(stamp, f"d{stamp}")
    assert buffer.nearest(200, 0) == "d200"  # exact
    assert buffer.nearest(240, 50) == "d200"
    assert buffer.nearest(260, 50) == "d300"
    assert buffer.nearest(150, 50) == "d200"  # a tie: the newer one
    assert buffer.nearest(450, 100) is None
    assert buffer.newest_stamp() == 300


def test_old_items_age_out_and_clear_empties():
    buffer = StampBuffer(capacity=2)
    for stamp in (1, 2, 3):
        buffer.put(stamp, stamp)
    assert buffer.nearest(1, 0) is None and buffer.nearest(2, 0) == 2
    buffer.clear()
    assert buffer.nearest(3, 10) is None


def test_the_buffer_is_bounded_in_bytes_and_keeps_the_newest():
    buffer = StampBuffer(capacity=32, max_bytes=100)
    for stamp in range(10):
        buffer.put(stamp, stamp, size=30)
    assert len(buffer) == 3 and buffer.bytes == 90  # the last three fit
    assert buffer.nearest(6, 0) is None and buffer.nearest(7, 0) == 7
    buffer.put(10, "huge", size=1000)  # over the budget alone: kept, the others go
    assert len(buffer) == 1 and buffer.bytes == 1000 and buffer.nearest(10, 0) == "huge"
    buffer.put(11, 11, size=10)
    assert len(buffer) == 1 and buffer.bytes == 10
    buffer.clear()
    assert len(buffer) == 0 and buffer.bytes == 0


def test_the_default_budget_holds_32_frames_of_1280x720_depth():
    from saom_ros.stamp_pairing import DEPTH_BYTES_KEPT, DEPTH_FRAMES_KEPT
    assert DEPTH_FRAMES_KEPT * 1280 * 720 * 4 <= DEPTH_BYTES_KEPT  # 32FC1
    buffer = StampBuffer()
    for stamp in range(40):
        buffer.put(stamp, stamp, size=2048 * 2048 * 4)
    assert len(buffer) == 8 and buffer.bytes <= DEPTH_BYTES_KEPT


def test_a_tie_goes_to_the_later_stamp_whatever_the_arrival_order():
    buffer = StampBuffer()
    buffer.put(100, "d100")
    buffer.put(80, "d80")  # arrived later, stamped earlier
    assert buffer.nearest(90, 20) == "d100" and buffer.newest_stamp() == 100
    buffer.put(100, "d100 again")  # the same stamp again: the camera's latest version
    assert buffer.nearest(90, 20) == "d100 again"


@contextlib.contextmanager
def put_later(buffer: StampBuffer, delay_s: float, stamp: int, item: str):
    """``buffer.put(stamp, item)`` from another thread after ``delay_s``, inside the block."""
    timer = threading.Timer(delay_s, buffer.put, (stamp, item))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def test_waits_for_the_frame_of_the_same_moment_while_depth_arrives():
    """An older frame within the tolerance is in; the exact one comes from another thread."""
    buffer = StampBuffer()
    buffer.put(1000, "older")
    with put_later(buffer, 0.05, 1017, "exact"):
        assert buffer.nearest(1017, 20, wait_s=30.0) == "exact"
    # A frame at or after the stamp is in: no waiting (a wait would see the nearer one come).
    with put_later(buffer, 0.5, 1012, "nearer"):
        assert buffer.nearest(1012, 20, wait_s=30.0) == "exact"
