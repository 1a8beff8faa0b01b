"""stamp_pairing: nearest stamp within the tolerance, bounded buffer."""
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
