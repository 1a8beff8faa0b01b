"""Tests for saom_ros.full_size_cpu: one compiled pass gives the tensor path's stability and boxes."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from torch.nn import functional as F

from saom_ros.full_size import boxes_of, stability_scores, stepped, upsample
from saom_ros.full_size_cpu import stability_and_boxes


def _logits(n: int, hw: tuple[int, int], seed: int) -> torch.Tensor:
    """Blobs of low-res logits [n, h, w] (soft edges, specks, one empty and one full mask)."""
    torch.manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, 1, 4 * hw[0], 4 * hw[1]) * 20, 4)[:, 0] - 2
    x[0] = -5.0
    x[1] = 5.0
    return x


def _stepped(low: torch.Tensor) -> torch.Tensor:
    """The first resize of low-res logits [N, h, w], uncropped, as [4h, 4w, N]."""
    return stepped(low, 4, (4 * low.shape[1], 4 * low.shape[2]))[0].permute(1, 2, 0)


@pytest.mark.parametrize("n, low_hw, input_hw, orig_hw", [
    (8, (16, 16), (64, 64), (64, 64)),  # the input size: PyTorch's logits are read as they are
    (32, (16, 16), (60, 63), (60, 63)),  # cropped to a smaller input
])
def test_at_the_input_size_it_equals_the_tensor_path(n: int, low_hw: tuple, input_hw: tuple,
                                                      orig_hw: tuple) -> None:
    low = _logits(n, low_hw, seed=n)
    full = upsample(low, 4, input_hw, orig_hw)
    stability, boxes = stability_and_boxes(_stepped(low), input_hw, orig_hw, 0.0, 1.0)
    torch.testing.assert_close(stability, stability_scores(full, 0.0, 1.0, (0, 1)), rtol=0,
                               atol=0, equal_nan=True)
    assert torch.equal(boxes, boxes_of(full, 0.0))


@pytest.mark.parametrize("n, low_hw, input_hw, orig_hw, threshold", [
    (8, (16, 16), (48, 64), (90, 120), 0.0),  # upscaled
    (16, (64, 64), (192, 256), (480, 640), 0.5),  # the node's default camera with SAOM-small
    (8, (32, 32), (128, 96), (100, 75), -0.5),  # downscaled
    (3, (8, 8), (32, 1), (1000, 3), 0.0),  # an extremely thin image
])
def test_resized_it_equals_the_tensor_path_up_to_rounding(n: int, low_hw: tuple,
                                                          input_hw: tuple, orig_hw: tuple,
                                                          threshold: float) -> None:
    low = _logits(n, low_hw, seed=n)
    full = upsample(low, 4, input_hw, orig_hw)
    stability, boxes = stability_and_boxes(_stepped(low), input_hw, orig_hw, threshold, 1.0)
    # A logit within rounding of a threshold may fall on the other side: a pixel or two.
    torch.testing.assert_close(stability, stability_scores(full, threshold, 1.0, (0, 1)),
                               rtol=0, atol=1e-4, equal_nan=True)
    assert (boxes - boxes_of(full, threshold)).abs().max() <= 1
    assert boxes[0].tolist() == [0, 0, 0, 0]  # the empty mask
    assert boxes[1].tolist() == [0, 0, orig_hw[1] - 1, orig_hw[0] - 1]  # the full one


def test_no_masks_give_empty_results() -> None:
    stability, boxes = stability_and_boxes(torch.zeros(64, 64, 0), (64, 64), (64, 64), 0.0, 1.0)
    assert stability.shape == (0,) and boxes.shape == (0, 4)


def test_row_blocks_on_several_threads_give_the_one_thread_result() -> None:
    low = _logits(16, (16, 16), seed=3)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3, 7):  # 7 blocks of 90 rows: uneven
            torch.set_num_threads(n)
            results.append(stability_and_boxes(_stepped(low), (48, 64), (90, 120), 0.0, 1.0))
    finally:
        torch.set_num_threads(threads)
    for stability, boxes in results[1:]:
        torch.testing.assert_close(stability, results[0][0], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(boxes, results[0][1])


def test_a_forked_child_gets_threads_of_its_own() -> None:
    x = _stepped(_logits(8, (16, 16), seed=5))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = stability_and_boxes(x, (48, 64), (90, 120), 0.0, 1.0)  # the pool is made
        pid = os.fork()
        if pid == 0:  # the child: the inherited pool has no threads
            got = stability_and_boxes(x, (48, 64), (90, 120), 0.0, 1.0)
            os._exit(0 if torch.equal(got[1], expected[1]) else 1)
        deadline = time.monotonic() + 30
        while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        status = done[1]
        if not done[0]:  # still waiting for threads that do not exist
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in stability_and_boxes")
    finally:
        torch.set_num_threads(threads)
    assert os.waitstatus_to_exitcode(status) == 0
