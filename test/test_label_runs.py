import numpy as np
import pytest

from saom_ros.label_runs import group_by_label, label_runs


def test_runs_cover_the_image_and_end_with_their_row():
    labels = np.array([[0, 0, 1, 1],
                       [1, 1, 1, 2],
                       [2, 2, 0, 0]], np.uint16)
    runs = label_runs(labels)
    assert runs.starts.tolist() == [0, 2, 4, 7, 8, 10]
    assert runs.lengths.tolist() == [2, 2, 3, 1, 2, 2]
    assert runs.labels.tolist() == [0, 1, 1, 2, 2, 0]
    assert (runs.starts // runs.width).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("seed", range(5))
def test_runs_rebuild_the_image(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (7, 11)).astype(np.uint16)
    runs = label_runs(labels)
    assert np.array_equal(np.repeat(runs.labels, runs.lengths), labels.ravel())
    assert (runs.starts // 11 == (runs.starts + runs.lengths - 1) // 11).all()


def test_group_by_label_keeps_row_order_within_a_label():
    order, first = group_by_label(np.array([2, 1, 2, 1, 3], np.uint16))
    assert order.tolist() == [1, 3, 0, 2, 4]
    assert first.tolist() == [0, 2, 4]

