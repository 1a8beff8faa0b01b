"""Tests for saom_ros.full_size_cpu: one compiled pass over low-res logits gives the generator's
full-size stability scores, masks and boxes."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score
from torch.nn import functional as F

from saom_ros.full_size_cpu import masks_and_boxes, stability_and_boxes


def _logits(n: int, hw: tuple[int, int], seed: int) -> torch.Tensor:
    """Blobs of low-res logits [n, h, w] (soft edges, specks, one empty and one full mask)."""
    torch.manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, 1, 4 * hw[0], 4 * hw[1]) * 20, 4)[:, 0] - 2
    x[0] = -5.0
    x[1] = 5.0
    return x


def _generator(low: torch.Tensor, input_hw: tuple, orig_hw: tuple, threshold: float,
               offset: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stability scores, masks and boxes as SamAutomaticMaskGenerator makes them: the logits
    resized by Sam.postprocess_masks' two bilinear steps (channels first), then
    segment_anything's own functions."""
    x = F.interpolate(low[None], (4 * low.shape[1], 4 * low.shape[2]), mode="bilinear",
                      align_corners=False)[..., :input_hw[0], :input_hw[1]]
    x = F.interpolate(x, orig_hw, mode="bilinear", align_corners=False)[0]
    return calculate_stability_score(x, threshold, offset), x > threshold, \
        batched_mask_to_box(x > threshold).float()


def _assert_generators(low: torch.Tensor, input_hw: tuple, orig_hw: tuple,
                       threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    stability, boxes = stability_and_boxes(low, 4, input_hw, orig_hw, threshold, 1.0)
    masks, mask_boxes = masks_and_boxes(low, 4, input_hw, orig_hw, threshold)
    expected_stability, expected_masks, expected_boxes = _generator(low, input_hw, orig_hw,
                                                                    threshold, 1.0)
    torch.testing.assert_close(stability, expected_stability, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(masks, expected_masks)
    assert torch.equal(boxes, expected_boxes) and torch.equal(mask_boxes, expected_boxes)
    return stability, boxes


@pytest.mark.parametrize("n, low_hw, input_hw, orig_hw, threshold", [
    (8, (16, 16), (64, 64), (64, 64), 0.0),  # the input size
    (32, (16, 16), (60, 63), (60, 63), 0.0),  # cropped to a smaller input
    (5, (64, 64), (256, 256), (256, 256), 0.0),  # SAOM-small on a 256x256 image
    (8, (16, 16), (48, 64), (90, 120), 0.0),  # upscaled
    (16, (64, 64), (192, 256), (480, 640), 0.5),  # the node's default camera with SAOM-small
    (8, (32, 32), (128, 96), (100, 75), -0.5),  # downscaled
    (3, (8, 8), (32, 1), (1000, 3), 0.0),  # an extremely thin image
])
def test_it_equals_the_generator_bit_for_bit(n: int, low_hw: tuple, input_hw: tuple,
                                             orig_hw: tuple, threshold: float) -> None:
    _, boxes = _assert_generators(_logits(n, low_hw, seed=n), input_hw, orig_hw, threshold)
    assert boxes[0].tolist() == [0, 0, 0, 0]  # the empty mask
    assert boxes[1].tolist() == [0, 0, orig_hw[1] - 1, orig_hw[0] - 1]  # the full one


@pytest.mark.parametrize("input_hw, orig_hw", [((128, 128), (128, 128)), ((96, 128), (180, 240))])
def test_logits_within_rounding_of_the_thresholds_count_as_the_generator_counts(
        input_hw: tuple, orig_hw: tuple) -> None:
    # Whole blocks count at once only when clear of every threshold by MARGIN; these are not.
    # Each pixel's count then hangs on its logit's last bit. (PyTorch rounds resizes to at most
    # 64x64 pixels otherwise: smaller sizes than any model's.)
    torch.manual_seed(0)
    near = torch.tensor([-1.0, 0.0, 1.0])[torch.randint(0, 3, (6, 32, 32))]
    low = near + torch.randint(-3, 4, near.shape) * 1e-7
    low[0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))  # all just above one
    _assert_generators(low, input_hw, orig_hw)


def test_no_masks_give_empty_results() -> None:
    stability, boxes = stability_and_boxes(torch.zeros(0, 16, 16), 4, (64, 64), (64, 64), 0.0,
                                           1.0)
    assert stability.shape == (0,) and boxes.shape == (0, 4)
    masks, boxes = masks_and_boxes(torch.zeros(0, 16, 16), 4, (64, 64), (90, 120), 0.0)
    assert masks.shape == (0, 90, 120) and masks.dtype == torch.bool and boxes.shape == (0, 4)


def test_masks_on_several_threads_give_the_one_thread_result() -> None:
    low = _logits(16, (16, 16), seed=3)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3, 7):  # 7 ranges of 16 masks: uneven
            torch.set_num_threads(n)
            results.append(stability_and_boxes(low, 4, (48, 64), (90, 120), 0.0, 1.0)
                           + masks_and_boxes(low, 4, (48, 64), (90, 120), 0.0))
    finally:
        torch.set_num_threads(threads)
    for result in results[1:]:
        torch.testing.assert_close(result[0], results[0][0], rtol=0, atol=0, equal_nan=True)
        assert all(torch.equal(a, b) for a, b in zip(result[1:], results[0][1:]))


def test_a_forked_child_on_one_thread_counts_without_the_team() -> None:
    # OpenMP threads do not survive a fork: PyTorch's own ops hang in a child that uses more
    # than one thread after its parent did, so children (DataLoader workers) use one thread.
    x = _logits(8, (16, 16), seed=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = stability_and_boxes(x, 4, (48, 64), (90, 120), 0.0, 1.0)  # on the team
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(1)
            got = stability_and_boxes(x, 4, (48, 64), (90, 120), 0.0, 1.0)
            os._exit(0 if torch.equal(got[1], expected[1]) else 1)
        deadline = time.monotonic() + 30
        while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        status = done[1]
        if not done[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in stability_and_boxes")
    finally:
        torch.set_num_threads(threads)
    assert os.waitstatus_to_exitcode(status) == 0
