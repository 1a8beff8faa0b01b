"""The second pass's points: a few deep ones inside each new near mask, outside confident ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from saom_ros.candidates import Candidates, Frame
from saom_ros.everything_settings import EverythingSettings
from saom_ros.second_pass import among, near_pass, new_masks, passes, spread_over_new_masks


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


def test_new_masks_are_those_mostly_outside_the_confident_ones_kept_by_nms_first() -> None:
    frame = Frame(torch.zeros(1, 8, 4, 4), (64, 64), (64, 64), 64, 16)  # low-res 16x16, 4 px
    logits = torch.full((5, 16, 16), -1.0)
    logits[0, :8, :8] = 1.0  # confident: the top-left quarter
    logits[1, :8, :10] = 1.0  # 1/5 outside the confident mask: a variant of it, not new
    logits[2, 6:, 6:] = 1.0  # new, overlapping mask 3: box NMS removes it
    logits[3, 8:, 8:] = 1.0  # new, the bottom-right quarter, of higher predicted IoU
    logits[4, :4, 12:] = 1.0  # new, apart from the others
    near = _candidates(logits, [0.9, 0.8, 0.6, 0.7, 0.5], 4.0)
    new = new_masks(frame, near, near.select(torch.tensor([0])), 0.0, 0.5)
    assert [int(torch.nonzero((logits == m).all(-1).all(-1))) for m in new] == [3, 4, 2]


def test_each_new_mask_takes_its_deepest_points_that_no_mask_before_it_took() -> None:
    frame = Frame(torch.zeros(1, 8, 4, 4), (64, 64), (64, 64), 64, 16)  # low-res 16x16, 4 px
    logits = torch.full((3, 16, 16), -1.0)
    logits[0, :8, :8] = 1.0  # confident: the top-left quarter
    logits[1, 8:, 8:] = 1.0  # new, kept by NMS: the bottom-right quarter
    logits[2, 6:, 6:] = 1.0  # new, removed by NMS, reaching into the confident mask
    near = _candidates(logits, [0.9, 0.8, 0.6], 4.0)
    confident = near.select(torch.tensor([0]))
    new = new_masks(frame, near, confident, 0.0, 0.5)
    points = np.stack(np.meshgrid(np.arange(4, 64, 8), np.arange(4, 64, 8)), -1).reshape(-1, 2)
    points = points.astype(np.float32)
    taken = points[spread_over_new_masks(frame, new, confident.logits, points, 0.0, 2)]
    assert len(taken) == 4
    # Mask 1 first: its deepest point (4 low-res pixels from its border), then one 3 deep.
    assert [44, 44] in taken.tolist()
    assert sum(p[0] >= 32 and p[1] >= 32 for p in taken.tolist()) >= 2
    # Mask 2 then takes two more of its points, none that mask 1 took.
    assert np.all(taken >= 28) and len(np.unique(taken, axis=0)) == 4
    every = points[spread_over_new_masks(frame, new, confident.logits, points, 0.0, 0)]
    # 0 (streaming's default): every point inside a new mask and outside the confident one. The
    # point (28, 28) lies in mask 2 and in the confident mask; points outside new masks are
    # refused.
    assert len(every) == 5 * 5 - 1 and [28, 28] not in every.tolist()
    assert not spread_over_new_masks(frame, new[:0], confident.logits, points, 0.0, 2).any()


def test_near_masks_pass_the_filters_or_miss_each_by_at_most_five_hundredths() -> None:
    """README (confident_iou_thresh): the second pass looks inside the coarse masks that pass
    the filters or miss each by at most 0.05."""
    s = EverythingSettings(pred_iou_thresh=0.6, stability_score_thresh=0.8)
    iou = [0.61, 0.56, 0.54, 0.9, 0.56]
    stability = [0.81, 0.76, 0.9, 0.74, 0.9]
    n = len(iou)
    cand = Candidates(torch.zeros(n, 4, 4), torch.tensor(iou), torch.ones(n, 1),
                      torch.tensor(stability), torch.zeros(n, 4), torch.arange(n),
                      torch.zeros(n, 2))
    assert passes(cand, s).tolist() == [True, False, False, False, False]
    # Both missed by 0.04: near; the IoU or the stability missed by 0.06: not.
    assert passes(cand, near_pass(s)).tolist() == [True, True, False, False, True]
    # A threshold within 0.05 of 0 leaves that filter off, not below 0.
    low = near_pass(EverythingSettings(pred_iou_thresh=0.03, stability_score_thresh=0.8))
    assert low.pred_iou_thresh == 0.0 and low.stability_score_thresh == pytest.approx(0.75)


def _masks_partly_outside(outside_counts: list[int]) -> torch.Tensor:
    """Low-res logits [1 + n, 16, 16]: a confident mask of 100 pixels (the top-left 10x10), then
    masks of 100 pixels each with the given count of them outside it."""
    logits = torch.full((1 + len(outside_counts), 16, 16), -1.0)
    logits[0, :10, :10] = 1.0
    inside = logits[0].flatten() > 0
    inside, outside = inside.nonzero()[:, 0], (~inside).nonzero()[:, 0]
    for mask, out in zip(logits[1:], outside_counts):
        mask.view(-1)[torch.cat([inside[:100 - out], outside[-out:]])] = 1.0
    return logits


def _new_of(logits: torch.Tensor) -> list[int]:
    """Which masks of ``_masks_partly_outside`` are new (NMS off, descending predicted IoU)."""
    frame = Frame(torch.zeros(1, 8, 4, 4), (64, 64), (64, 64), 64, 16)  # low-res 16x16, 4 px
    near = _candidates(logits, [0.9 - 0.1 * i for i in range(len(logits))], 4.0)
    new = new_masks(frame, near, near.select(torch.tensor([0])), 0.0, 1.0)
    return [int(torch.nonzero((logits == m).all(-1).all(-1))) for m in new]


def test_a_near_mask_is_new_when_at_least_30_percent_of_it_is_outside_the_confident_ones() -> None:
    """README (confident_iou_thresh): new masks lie at least 30% outside the confident masks."""
    assert _new_of(_masks_partly_outside([29, 31, 20, 60])) == [2, 4]


def test_a_near_mask_exactly_30_percent_outside_the_confident_ones_is_new() -> None:
    assert _new_of(_masks_partly_outside([30])) == [1]
