"""The second pass's points: inside new near masks, outside confident ones, not decoded yet."""
from __future__ import annotations

import numpy as np
import torch

from saom_ros.candidates import Candidates, Frame
from saom_ros.second_pass import among, deepest_points, unexplained


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


def _candidates(logits: torch.Tensor, iou: list[float], scale: float) -> Candidates:
    """Candidates of low-res ``logits`` [N, h, w] with boxes in original pixels (``scale`` per
    low-res pixel)."""
    rows, cols = (logits > 0).any(2), (logits > 0).any(1)
    boxes = torch.tensor([[c.nonzero().min(), r.nonzero().min(), c.nonzero().max() + 1,
                           r.nonzero().max() + 1] for r, c in zip(rows, cols)]) * scale - \
        torch.tensor([0, 0, 1, 1])
    n = len(logits)
    return Candidates(logits, torch.tensor(iou), torch.ones(n, 1), torch.ones(n),
                      boxes.float(), torch.arange(n), torch.zeros(n, 2))


def test_deepest_points_of_new_masks_and_of_confident_masks_of_low_iou() -> None:
    # Input 64x64 (low-res 16x16, 4 input px each), shown at 128x128: 8 original px each.
    frame = Frame(torch.zeros(1, 8, 4, 4), (128, 128), (64, 64), 64, 16)
    logits = torch.full((5, 16, 16), -1.0)
    logits[0, :8, :8] = 1.0  # confident, high predicted IoU: no point
    logits[1, 8:, :8] = 1.0  # confident, low predicted IoU: a point at its centre
    logits[2, :8, 8:] = 1.0  # new: a point at its centre
    logits[3, :8, 9:] = 1.0  # new, but box NMS keeps mask 2 over it
    logits[4, :8, :10] = 1.0  # 1/5 outside the confident masks: a variant, not new
    near = _candidates(logits, [0.9, 0.3, 0.6, 0.5, 0.8], 8.0)
    confident = near.select(torch.tensor([0, 1]))
    points = deepest_points(frame, near, confident, 0.0, 0.7)
    # The deepest pixels of the 8x8 squares lie within half a low-res pixel of their centres.
    np.testing.assert_allclose(points, [[96, 32], [32, 96]], atol=4.0)
    none = deepest_points(frame, near.select(torch.tensor([0])), confident.select(
        torch.tensor([0])), 0.0, 0.7)
    assert none.shape == (0, 2)
