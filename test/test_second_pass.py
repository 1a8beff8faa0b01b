"""The second pass's points: inside new near masks, outside confident ones, not decoded yet."""
from __future__ import annotations

import numpy as np
import torch

from saom_ros.candidates import Frame
from saom_ros.second_pass import among, unexplained


def test_only_points_inside_new_masks_and_outside_confident_ones_are_unexplained() -> None:
    frame = Frame(torch.zeros(1, 8, 4, 4), (64, 64), (64, 64), 64, 16)  # low-res 16x16, 4 px
    logits = torch.full((3, 16, 16), -1.0)
    logits[0, :8, :8] = 1.0  # confident: the top-left quarter
    logits[1, :8, :10] = 1.0  # 1/5 outside the confident mask: a variant of it
    logits[2, 8:, 8:] = 1.0  # new: the bottom-right quarter
    points = np.array([[10, 10], [40, 10], [50, 50], [10, 50]], np.float32)
    near, confident = logits, logits[:1]
    assert unexplained(frame, near, confident, points, 0.0).tolist() == [
        False,  # found
        False,  # only in a variant of the found object
        True,  # in a new mask
        False]  # in no mask: every coarse mask there was refused


def test_among_finds_the_points_equal_in_x_and_y() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):  # few values, so that many points repeat one coordinate or both
        points = (rng.integers(0, 4, (rng.integers(0, 30), 2)) * 0.5).astype(np.float32)
        decoded = (rng.integers(0, 4, (rng.integers(0, 30), 2)) * 0.5).astype(np.float32)
        expected = (points[:, None] == decoded[None]).all(-1).any(1)
        np.testing.assert_array_equal(among(points, decoded), expected)
    assert among(np.float32([[0.0, 1.0], [1.0, 0.0]]), np.float32([[-0.0, 1.0]])).tolist() == \
        [True, False]
