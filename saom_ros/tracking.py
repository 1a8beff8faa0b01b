"""Persistent instance ids across frames: mask IoU matching with an optimal assignment. No ROS.

Each frame's instances are matched to the tracks of earlier frames by the IoU of their footprints
in the instance image (the pixels each instance owns, as published in ``~/instances``; compared
on every MATCH_STRIDE-th row and column), with
scipy's ``linear_sum_assignment`` maximising the total IoU; pairs below ``iou_threshold`` are not
matched. A track that finds no match is remembered for ``max_missed`` frames (its last footprint,
less the pixels other instances have claimed since), so an object the segmenter misses for a frame
or two keeps its id. Unmatched instances get new ids; an id is not given out again until
``id_reuse_delay`` frames after its track ended. Ids are 1..65535 and unique within a frame.

Streaming prompts (``EverythingSettings.prompt_strategy == "streaming"``) already know which
instance of the previous frame a mask came from (``Instances.prompt_source``). That link counts in
the assignment as an overlap of at least ``iou_threshold``: a mask that moved far still keeps its
source's id, but a real overlap wins over it (a point inside one part of an object can return the
whole object, which is another track).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:  # everything.py imports torch; the tracker needs only its arrays.
    from saom_ros.everything import Instances

MAX_ID = 65535  # ids are uint16; 0 means "no instance"
# Footprints are compared on every MATCH_STRIDE-th row and column: IoUs within a percent or so
# for anything larger than a few pixels, at a quarter of the cost.
MATCH_STRIDE = 2


class Tracker:
    """Gives each instance of a frame a track id that persists while the object stays in view."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5,
                 id_reuse_delay: int = 300) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_missed < 0 or id_reuse_delay < 0:
            raise ValueError(f"max_missed and id_reuse_delay must be >= 0, got {max_missed}, "
                             f"{id_reuse_delay}")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.id_reuse_delay = id_reuse_delay
        self._frame = 0
        self._next_id = 1
        self._retired: dict[int, int] = {}  # id -> frame its track ended, oldest first
        self._forget()

    def _forget(self) -> None:
        """Drop the tracks (not the record of retired ids)."""
        # Slot s of the memory image (value s + 1) is track _slot_ids[s], last seen _slot_seen[s].
        self._memory: Optional[np.ndarray] = None
        self._slot_ids = np.zeros(0, np.uint16)
        self._slot_seen = np.zeros(0, np.int64)
        self._last_ids = np.zeros(0, np.uint16)  # by index of the last update's instances

    def reset(self) -> None:
        """Forget every track (e.g. the node was deactivated). Their ids count as retired now, so
        they are not given to other objects within ``id_reuse_delay`` frames."""
        for track_id in self._slot_ids.tolist():
            self._retire(track_id)
        self._forget()

    def update(self, instances: Instances) -> np.ndarray:
        """Track ids ``uint16[N]`` for ``instances`` (the next frame), by instance index.

        Every instance gets an id, also one that owns no pixel of the instance image (hidden by
        better-scoring ones; it appears in no message): finding those would cost a full pass.
        """
        return self.assign(instances.instance_image, len(instances), instances.prompt_source)

    def assign(self, instance_image: np.ndarray, count: int,
               prompt_source: Optional[np.ndarray] = None) -> np.ndarray:
        """``update`` on arrays: ``instance_image`` uint16 [H, W] (0 none, i + 1 = instance i),
        ``count`` instances, ``prompt_source`` int [count] (-1 or an index into the previous
        frame's instances)."""
        self._frame += 1
        grid = instance_image[::MATCH_STRIDE, ::MATCH_STRIDE]
        if self._memory is not None and self._memory.shape != grid.shape:
            self.reset()  # another camera resolution: nothing can be matched by pixels
        ids = np.zeros(count, np.uint16)
        slot_of = np.full(count, -1, np.intp)  # matched old slot per instance
        pairs = None
        if self._memory is not None:
            # Each grid pixel's (memory slot + 1, instance + 1) as one code, built in place: its
            # histogram gives the footprints' intersections, a table over it the next memory.
            pairs = self._memory.astype(np.intp)
            pairs *= count + 1
            pairs += grid
            if len(self._slot_ids) and count:
                iou = footprint_iou(pairs, len(self._slot_ids), count)
                if prompt_source is not None:
                    self._credit_prompts(prompt_source, iou)
                self._match(iou, ids, slot_of)
        live = set(self._slot_ids.tolist())
        for i in np.flatnonzero(ids == 0).tolist():
            ids[i] = self._allocate(live)
            live.add(int(ids[i]))
        self._remember(grid, pairs, ids, slot_of)
        return ids

    def _credit_prompts(self, prompt_source: np.ndarray, iou: np.ndarray) -> None:
        """Raise ``iou`` [slots, instances] to ``iou_threshold`` where an instance was prompted
        from the previous instance of that track."""
        slot_by_id = {int(t): s for s, t in enumerate(self._slot_ids.tolist())}
        for i, source in enumerate(np.asarray(prompt_source).tolist()):
            if 0 <= source < len(self._last_ids):
                slot = slot_by_id.get(int(self._last_ids[source]))
                if slot is not None:
                    iou[slot, i] = max(iou[slot, i], self.iou_threshold)

    def _match(self, iou: np.ndarray, ids: np.ndarray, slot_of: np.ndarray) -> None:
        """Give instances the ids of tracks by the assignment that maximises the total IoU
        (``iou``: [slots, instances]); pairs below ``iou_threshold`` are not matched."""
        rows, cols = linear_sum_assignment(iou, maximize=True)
        good = iou[rows, cols] >= self.iou_threshold
        for s, i in zip(rows[good].tolist(), cols[good].tolist()):
            ids[i], slot_of[i] = self._slot_ids[s], s

    def _remember(self, grid: np.ndarray, pairs: Optional[np.ndarray], ids: np.ndarray,
                  slot_of: np.ndarray) -> None:
        """New memory: this frame's instances (slot i = instance i), then the unmatched tracks
        still within ``max_missed`` frames on the pixels nobody owns now; retire the others.
        ``pairs``: the codes of ``assign`` (None without memory)."""
        slots, count = len(self._slot_ids), len(ids)
        unmatched = np.ones(slots, bool)
        unmatched[slot_of[slot_of >= 0]] = False
        missing = np.flatnonzero(unmatched)
        keep = missing[self._frame - self._slot_seen[missing] <= self.max_missed]
        # Never remember more tracks than there are ids.
        keep = keep[np.argsort(-self._slot_seen[keep], kind="stable")][:MAX_ID - count]
        unmatched[keep] = False  # the rest retire
        for s in np.flatnonzero(unmatched).tolist():
            self._retire(int(self._slot_ids[s]))
        if len(keep):  # then there were slots, so a memory and its pairs
            # Per (slot + 1, instance + 1) code: the instance where there is one, else the
            # slot's track renumbered after this frame's instances (0 if it is not kept).
            table = np.empty((slots + 1, count + 1), np.uint16)
            table[:] = np.arange(count + 1, dtype=np.uint16)
            table[:, 0] = 0
            table[keep + 1, 0] = count + 1 + np.arange(len(keep))
            memory = table.ravel().take(pairs)
        else:
            memory = grid.astype(np.uint16)  # a copy
        seen = np.full(len(ids), self._frame, np.int64)
        self._slot_ids = np.concatenate([ids, self._slot_ids[keep]])
        self._slot_seen = np.concatenate([seen, self._slot_seen[keep]])
        self._memory = memory
        self._last_ids = ids.copy()

    def _retire(self, track_id: int) -> None:
        self._retired.pop(track_id, None)  # keep the dict in retirement order
        self._retired[track_id] = self._frame

    def _allocate(self, live: set[int]) -> int:
        """The next id in 1..65535 that no live track holds and that retired long enough ago;
        the longest-retired id if every id is taken (only under extreme churn)."""
        while self._retired:  # forget retirements older than the delay
            oldest, frame = next(iter(self._retired.items()))
            if self._frame - frame <= self.id_reuse_delay:
                break
            del self._retired[oldest]
        for _ in range(MAX_ID):
            candidate = self._next_id
            self._next_id = self._next_id % MAX_ID + 1
            if candidate not in live and candidate not in self._retired:
                return candidate
        for candidate in self._retired:
            if candidate not in live:
                del self._retired[candidate]
                return candidate
        raise RuntimeError("more than 65535 live tracks")  # excluded by the caps above


def footprint_iou(codes: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """IoU [rows, cols] of two sets of footprints given as one image of codes: a pixel's code is
    ``(r + 1) * (cols + 1) + c + 1`` where footprint r of the first set and footprint c of the
    second cover it (``r + 1`` or ``c + 1`` is 0 where none does), as ``first * (cols + 1) +
    second`` of two instance images. One joint histogram; the areas are its margins."""
    joint = np.bincount(codes.ravel(), minlength=(rows + 1) * (cols + 1)
                        ).reshape(rows + 1, cols + 1)
    inter = joint[1:, 1:]
    union = joint[1:].sum(axis=1)[:, None] + joint[:, 1:].sum(axis=0)[None, :] - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def track_image(instance_image: np.ndarray, track_ids: np.ndarray) -> np.ndarray:
    """The instance image with each instance's track id in place of its index + 1 (0 stays 0)."""
    lut = np.concatenate(([0], track_ids)).astype(np.uint16)
    return lut.take(instance_image)  # take: the same lookup as lut[image], twice as fast
