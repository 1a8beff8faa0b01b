"""Persistent instance ids across frames: mask IoU matching with an optimal assignment. No ROS.

Each frame's instances are matched to the tracks of earlier frames by the IoU of their footprints
in the instance image (the pixels each instance owns, as published in ``~/instances``; compared
on every MATCH_STRIDE-th row and column), with
scipy's ``linear_sum_assignment`` maximising the total IoU; pairs below ``iou_threshold`` are not
matched. A track that finds no match is remembered for ``max_missed`` frames with its own last
footprint (whatever covers those pixels meanwhile: the wall mask behind a missed object, an
occluder), so an object the segmenter misses for a frame or two keeps its id. Unmatched instances get new ids; an id is not given out again until
``id_reuse_delay`` frames after its track ended. Ids are 1..65535 and unique within a frame.

Streaming prompts (``EverythingSettings.prompt_strategy == "streaming"``) already know which
instance of the previous frame a mask came from (``Instances.prompt_source``). That link counts in
the assignment as an overlap of at least ``iou_threshold``: a mask that moved far still keeps its
source's id, but a real overlap wins over it (a point inside one part of an object can return the
whole object, which is another track).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional

import numpy as np
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:  # everything.py imports torch; the tracker needs only its arrays.
    from saom_ros.everything import Instances

MAX_ID = 65535  # ids are uint16; 0 means "no instance"
# Footprints are compared on every MATCH_STRIDE-th row and column: IoUs within a percent or so
# for anything larger than a few pixels, at a quarter of the cost.
MATCH_STRIDE = 2


class _Missing(NamedTuple):
    """A track not seen in the last frame: its id, the frame it was last seen in, and its last
    footprint (flat indices into the match grid)."""

    track_id: int
    seen: int
    pixels: np.ndarray


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
        # The last frame's instance image on the match grid (instance i + 1) and its track ids.
        self._memory: Optional[np.ndarray] = None
        self._last_ids = np.zeros(0, np.uint16)
        self._missing: list[_Missing] = []

    def _track_ids(self) -> list[int]:
        """The ids of every remembered track: the last frame's instances', then the missing."""
        return self._last_ids.tolist() + [m.track_id for m in self._missing]

    def reset(self) -> None:
        """Forget every track (e.g. the node was deactivated). Their ids count as retired now, so
        they are not given to other objects within ``id_reuse_delay`` frames."""
        for track_id in self._track_ids():
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
        # A contiguous copy: every pass below reads it whole, and it is the next memory.
        grid = np.array(instance_image[::MATCH_STRIDE, ::MATCH_STRIDE], np.uint16)
        if self._memory is not None and self._memory.shape != grid.shape:
            self.reset()  # another camera resolution: nothing can be matched by pixels
        ids = np.zeros(count, np.uint16)
        slot_of = np.full(count, -1, np.intp)  # matched track per instance (a _track_ids index)
        tracks = self._track_ids()
        if tracks and count:
            iou = self._footprint_iou(grid, count)
            if prompt_source is not None:
                self._credit_prompts(prompt_source, iou)
            self._match(iou, tracks, ids, slot_of)
        live = set(tracks)
        for i in np.flatnonzero(ids == 0).tolist():
            ids[i] = self._allocate(live)
            live.add(int(ids[i]))
        self._remember(grid, ids, slot_of)
        return ids

    def _footprint_iou(self, grid: np.ndarray, count: int) -> np.ndarray:
        """IoU [tracks, instances] of each remembered track's last footprint (``_track_ids``
        order) with this frame's instances on the match grid: joint histograms of footprint
        codes (``joint_histogram``), one for the last frame's instance image, one for the
        missing tracks' own footprints."""
        flat = grid.ravel()
        last = len(self._last_ids)
        codes = self._memory.astype(np.intp) if last else np.zeros_like(flat, np.intp)
        codes = codes.ravel()
        codes *= count + 1
        codes += flat
        joint = joint_histogram(codes, last, count)  # its margins: the instances' areas
        if not self._missing:
            return iou_of_joint(joint)
        sizes = np.array([len(m.pixels) for m in self._missing])
        codes = np.repeat(np.arange(1, len(sizes) + 1) * (count + 1), sizes)
        codes += flat[np.concatenate([m.pixels for m in self._missing])]
        inter = joint_histogram(codes, len(sizes), count)[1:, 1:]
        union = sizes[:, None] + joint[:, 1:].sum(axis=0)[None, :] - inter
        missing = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
        return np.concatenate([iou_of_joint(joint), missing])

    def _credit_prompts(self, prompt_source: np.ndarray, iou: np.ndarray) -> None:
        """Raise ``iou`` [tracks, instances] to ``iou_threshold`` where an instance was prompted
        from an instance of the previous frame (track row = that instance's index)."""
        for i, source in enumerate(np.asarray(prompt_source).tolist()):
            if 0 <= source < len(self._last_ids):
                iou[source, i] = max(iou[source, i], self.iou_threshold)

    def _match(self, iou: np.ndarray, tracks: list[int], ids: np.ndarray,
               slot_of: np.ndarray) -> None:
        """Give instances the ids of tracks by the assignment that maximises the total IoU
        (``iou``: [tracks, instances]); pairs below ``iou_threshold`` are not matched."""
        rows, cols = linear_sum_assignment(iou, maximize=True)
        good = iou[rows, cols] >= self.iou_threshold
        for t, i in zip(rows[good].tolist(), cols[good].tolist()):
            ids[i], slot_of[i] = tracks[t], t

    def _remember(self, grid: np.ndarray, ids: np.ndarray, slot_of: np.ndarray) -> None:
        """New memory: this frame's instance image and ids; the unmatched tracks within
        ``max_missed`` frames keep their own last footprints; the others retire."""
        matched = set(slot_of[slot_of >= 0].tolist())
        last = len(self._last_ids)
        missing = [_Missing(int(self._last_ids[t]), self._frame - 1,
                            np.flatnonzero(self._memory.ravel() == t + 1))
                   for t in range(last) if t not in matched]
        missing += [m for k, m in enumerate(self._missing) if last + k not in matched]
        # A footprint without pixels can never match again; never more tracks than ids.
        kept = sorted((m for m in missing if self._frame - m.seen <= self.max_missed
                       and len(m.pixels)), key=lambda m: -m.seen)[:MAX_ID - len(ids)]
        kept_ids = {m.track_id for m in kept}
        for m in missing:
            if m.track_id not in kept_ids:
                self._retire(m.track_id)
        self._memory = grid
        self._last_ids = ids.copy()
        self._missing = kept

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
    second`` of two instance images."""
    return iou_of_joint(joint_histogram(codes, rows, cols))


def joint_histogram(codes: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[rows + 1, cols + 1] pixel counts of ``footprint_iou``'s codes."""
    return np.bincount(codes.ravel(), minlength=(rows + 1) * (cols + 1)).reshape(rows + 1,
                                                                                  cols + 1)


def iou_of_joint(joint: np.ndarray) -> np.ndarray:
    """IoU [rows, cols] from a joint histogram of two sets of footprints over every pixel of
    an image (row and column 0: pixels outside any footprint); the areas are its margins."""
    inter = joint[1:, 1:]
    union = joint[1:].sum(axis=1)[:, None] + joint[:, 1:].sum(axis=0)[None, :] - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def track_image(instance_image: np.ndarray, track_ids: np.ndarray) -> np.ndarray:
    """The instance image with each instance's track id in place of its index + 1 (0 stays 0)."""
    lut = np.concatenate(([0], track_ids)).astype(np.uint16)
    return lut.take(instance_image)  # take: the same lookup as lut[image], twice as fast
