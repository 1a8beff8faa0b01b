"""Tests for training/data_order.py: which images train, and their order per epoch and process."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from saom_ros.training.config import load_config
from saom_ros.training.data_order import DataOrder, has_trainable_mask, trainable_images
from saom_ros.training.distributed import DistInfo


class _Masks:
    """A dataset whose samples only hold masks (all the scan reads)."""

    class _Sample:
        def __init__(self, masks: np.ndarray) -> None:
            self.masks = masks

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int):
        return self._Sample(self.masks[i])


def _masks(*boxes: tuple[int, int, int, int], hw=(96, 128)) -> np.ndarray:
    out = np.zeros((len(boxes),) + hw, bool)
    for m, (y0, y1, x0, x1) in zip(out, boxes):
        m[y0:y1, x0:x1] = True
    return out


BIG, SPECK = (10, 50, 20, 80), (40, 43, 60, 63)  # a 3 x 3 px speck: under half of any cell


@pytest.mark.parametrize("masks, trainable", [
    (_masks(), False),
    (_masks(SPECK), False),  # vanishes on the 16 x 16 grid (8 x 8 image px a cell)
    (_masks(SPECK, BIG), True),
    (np.zeros((1, 96, 128), bool), False),
])
def test_has_trainable_mask_follows_the_assignment(masks, trainable):
    """Every prompt mode (random too) trains the masks the assignment keeps."""
    assert has_trainable_mask(masks, img_size=256, grid=16, min_coverage=0.5) is trainable


@pytest.mark.parametrize("workers, mode", [(0, "nearest"), (2, "nearest"), (0, "random")])
def test_trainable_images_leaves_out_frames_without_masks(workers, mode):
    data = _Masks([_masks(BIG), _masks(), _masks(SPECK), _masks(SPECK, BIG), _masks(BIG)])
    cfg = load_config(None, [f"data.num_workers={workers}", f"assignment.prompt_mode={mode}"])
    assert trainable_images(data, cfg, 256, 16, DistInfo(), torch.device("cpu")) == [0, 3, 4]


def test_the_order_with_every_image_is_distributed_samplers():
    """Nothing left out: the same order as before images could be left out (resumes of older
    runs stay exact)."""
    order = DataOrder(list(range(11)), range(11), DistInfo(), batch=2, accum=2, seed=5,
                      num_workers=0)
    assert order.steps_per_epoch == 2
    sampler = DistributedSampler(list(range(11)), num_replicas=1, rank=0, shuffle=True, seed=5,
                                 drop_last=True)
    sampler.set_epoch(3)
    assert order.epoch_indices(3) == list(sampler)[:8]


def test_processes_deal_one_process_order_and_skip_left_out_images():
    images = [0, 2, 3, 5, 7, 8, 9]
    one = DataOrder(None, images, DistInfo(), batch=2, accum=1, seed=0, num_workers=0)
    ranks = [DataOrder(None, images, DistInfo(rank=r, world=2), batch=1, accum=1, seed=0,
                       num_workers=0) for r in range(2)]
    for epoch in range(3):
        whole = one.epoch_indices(epoch)
        assert len(whole) == 6 and set(whole) <= set(images)
        dealt = [i for pair in zip(*(r.epoch_indices(epoch) for r in ranks)) for i in pair]
        assert dealt == whole  # step k: images 2k, 2k+1 either way
