"""The training run's data: which images train, their order per epoch and process, and the
micro-batches from a step on.

Only images with a trainable mask train (:func:`trainable_images`): a frame without instances,
or whose masks all vanish on the embedding grid, would give a zero loss and still move the
weights (AdamW's momentum and weight decay) and the schedule. They are left out up front, the
same way on every process and every resume, so the data position (step x grad_accum
micro-batches) names the same images whenever it is read with the same number of processes.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from saom_ros.training.assignment import kept_masks
from saom_ros.training.distributed import DistInfo
from saom_ros.training.process_lifetime import dataloader_worker_init, stop_signals_blocked


def has_trainable_mask(masks: np.ndarray, img_size: int, grid: int, min_coverage: float) -> bool:
    """Whether the prompt assignment would keep any of ``masks`` (bool [N, H, W]): every prompt
    mode trains the masks covering some cell of the ``grid``^2 embedding grid by at least
    ``min_coverage`` (``assignment.kept_masks``)."""
    if len(masks) == 0:
        return False
    kept = kept_masks(torch.from_numpy(np.ascontiguousarray(masks)), img_size, grid, min_coverage)
    return bool(kept.any())


class _Trainable(torch.utils.data.Dataset):
    """(index, has_trainable_mask) of one image: the scan runs in the DataLoader's workers."""

    def __init__(self, dataset, test) -> None:
        self.dataset, self.test = dataset, test

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, bool]:
        return i, self.test(self.dataset[i].masks)


def trainable_images(dataset, cfg: dict, img_size: int, grid: int, world: DistInfo,
                     device: torch.device) -> list[int]:
    """Indices of the images with a trainable mask, in order; each process scans its share.

    The scan reads every image's masks once (on the CPU, in ``data.num_workers`` workers).
    """
    ac = cfg["assignment"]
    test = partial(has_trainable_mask, img_size=img_size, grid=grid,
                   min_coverage=float(ac["min_coverage"]))
    mine = list(range(world.rank, len(dataset), world.world))
    flags = torch.zeros(len(dataset), dtype=torch.int64)
    if mine:
        loader = DataLoader(_Trainable(dataset, test), batch_size=None, sampler=mine,
                            num_workers=int(cfg["data"]["num_workers"]),
                            worker_init_fn=partial(dataloader_worker_init, os.getpid()))
        with stop_signals_blocked():
            scanned = iter(loader)
        for i, ok in scanned:
            flags[i] = int(ok)
    if world.world > 1:
        flags = flags.to(device)
        dist.all_reduce(flags)
    return torch.nonzero(flags.cpu()).flatten().tolist()


class _Indexed(torch.utils.data.Dataset):
    """(index, sample) pairs, so per-image randomness can be keyed by the index."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]


class DataOrder:
    """Per epoch a shuffle of ``images`` (seeded by seed and epoch), dealt to the processes as
    DistributedSampler deals it, cut to whole optimizer steps."""

    def __init__(self, dataset, images: Sequence[int], world: DistInfo, batch: int, accum: int,
                 seed: int, num_workers: int) -> None:
        self.dataset, self.images, self.world = dataset, list(images), world
        self.batch, self.accum, self.seed, self.num_workers = batch, accum, seed, num_workers
        self.steps_per_epoch = len(self.images) // (world.world * batch) // accum

    def epoch_indices(self, epoch: int) -> list[int]:
        """This process's image indices for ``epoch`` (the same on any resume)."""
        sampler = DistributedSampler(self.images, num_replicas=self.world.world,
                                     rank=self.world.rank, shuffle=True, seed=self.seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
        return [self.images[i] for i in sampler][:self.steps_per_epoch * self.accum * self.batch]

    def micro_batches(self, step: int) -> Iterator[tuple[int, list]]:
        """(epoch, [(index, Sample), ...]) from optimizer step ``step`` on, forever."""
        per_epoch = self.steps_per_epoch * self.accum
        epoch, offset = divmod(step * self.accum, per_epoch)
        while True:
            indices = self.epoch_indices(epoch)[offset * self.batch:]
            loader = DataLoader(_Indexed(self.dataset), batch_size=self.batch, sampler=indices,
                                collate_fn=list, num_workers=self.num_workers,
                                worker_init_fn=partial(dataloader_worker_init, os.getpid()))
            with stop_signals_blocked():  # the workers start here and must not die of Ctrl-C
                batches = iter(loader)
            for batch in batches:
                yield epoch, batch
            epoch, offset = epoch + 1, 0
