"""Candidate masks of everything mode: point prompts through the decoder and the generator's
per-mask filters (predicted IoU, stability at full size), before box NMS.

Prompts go through in ``points_per_batch`` chunks. The IoU token decides before any mask exists,
so prompts whose three masks all fail the IoU filter are never upscaled; a low-res stability
pre-screen drops masks that cannot pass at full size; survivors get the generator's full-size
stability score and box. Nothing here knows which strategy chose the points.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
from types import ModuleType
from typing import Callable, Iterator, Optional, TypeVar

import numpy as np
import torch

from saom_ros import full_size, full_size_cpu
from saom_ros.decoder import DecoderTokens
from saom_ros.everything_settings import EverythingSettings
from saom_ros.full_size import stability_scores
from saom_ros.model import Saom

# Masks whose low-res stability score is below the threshold by more than this are dropped
# without computing it at full size. Full-size scores exceeded low-res ones by at most 0.15
# (small masks, threshold 0.5; 0.015 above 0.9) in our measurements.
STABILITY_MARGIN = 0.2
# Prompts per decoder pass when points_per_batch is 0, on the CPU and on other devices.
CPU_BATCH, DEVICE_BATCH = 64, 256
T = TypeVar("T")
# The decoder's two stride-2 transposed convolutions: low-res mask pixels per embedding pixel.
LOW_RES_PER_EMBEDDING = 4


@dataclasses.dataclass
class Frame:
    """One image's embedding and the geometry that maps prompts and masks onto it."""

    embedding: torch.Tensor  # [1, C, h, w]
    orig_hw: tuple[int, int]
    input_hw: tuple[int, int]  # the image resized by its longest side to the model's input
    img_size: int
    patch_size: int

    @property
    def valid(self) -> tuple[int, int]:
        """Rows and columns of the low-res logits that cover the image (not the padding)."""
        f = LOW_RES_PER_EMBEDDING * self.embedding.shape[-1] / self.img_size
        return int(np.ceil(self.input_hw[0] * f)), int(np.ceil(self.input_hw[1] * f))

    @property
    def extent(self) -> tuple[int, int]:
        """Embedding rows and columns to make masks for: where the image is, plus the low-res
        row and column beyond it that the bilinear upsampling reads."""
        v = self.valid
        return (min(self.embedding.shape[-2], -(-(v[0] + 1) // LOW_RES_PER_EMBEDDING)),
                min(self.embedding.shape[-1], -(-(v[1] + 1) // LOW_RES_PER_EMBEDDING)))

    def to_input(self, points: np.ndarray) -> torch.Tensor:
        """(x, y) original-image pixels [n, 2] -> model input pixels, as the generator maps them."""
        scale = np.array([self.input_hw[1] / self.orig_hw[1], self.input_hw[0] / self.orig_hw[0]])
        return torch.as_tensor(points * scale, dtype=torch.float32, device=self.embedding.device)

    def stability_and_boxes(self, logits: torch.Tensor, threshold: float, offset: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-size stability scores [N] (``full_size.stability_scores``) and boxes [N, 4]
        (``full_size.boxes_of`` at ``threshold``) of low-res logits [N, h, w]. On the CPU in
        one compiled pass over the low-res logits that makes no full-size logits
        (``full_size_cpu``): resizing and passing over them was ~2/3 of a 640x480 frame there.
        Elsewhere from full-size logits, in chunks (``full_size``)."""
        return self._full_size(logits).stability_and_boxes(
            logits, self._step, self.input_hw, self.orig_hw, threshold, offset)

    def masks(self, logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-resolution masks (bool [N, H, W]) of low-res logits [N, h, w], and their boxes
        (float [N, 4], as ``full_size.boxes_of``); on the CPU in one compiled pass."""
        return self._full_size(logits).masks_and_boxes(logits, self._step, self.input_hw,
                                                       self.orig_hw, threshold)

    @staticmethod
    def _full_size(logits: torch.Tensor) -> ModuleType:
        """The module that does the full-size work on ``logits``' device."""
        return full_size_cpu if logits.device.type == "cpu" else full_size

    @property
    def _step(self) -> int:
        """Input pixels per low-res pixel."""
        return self.patch_size // LOW_RES_PER_EMBEDDING


@dataclasses.dataclass
class Candidates:
    """Masks that passed the filters, on the device, one row per mask."""

    logits: torch.Tensor  # [N, h, w] low-res
    iou: torch.Tensor  # [N] predicted IoU
    cls: torch.Tensor  # [N, C] class probabilities (one placeholder column if class-agnostic)
    stability: torch.Tensor  # [N] full-size stability score
    boxes: torch.Tensor  # [N, 4] float x0, y0, x1, y1 of the full-size mask
    prompt: torch.Tensor  # [N] long: index of the point (in the decoded points) it came from
    point: torch.Tensor  # [N, 2] that point, x, y in original-image pixels

    def __len__(self) -> int:
        return int(self.iou.shape[0])

    def select(self, index: torch.Tensor | slice) -> "Candidates":
        """The rows ``index`` (indices, a slice or a bool mask)."""
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            index = index.nonzero()[:, 0]  # one wait for the device instead of one per field
        return Candidates(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    @staticmethod
    def cat(parts: list["Candidates"]) -> "Candidates":
        return Candidates(*(torch.cat([getattr(p, f.name) for p in parts])
                            for f in dataclasses.fields(Candidates)))


def class_probs(class_logits: Optional[torch.Tensor], iou: torch.Tensor) -> torch.Tensor:
    """Per-prompt class probabilities [B, C]; for a class-agnostic model a placeholder column
    (such instances are scored by IoU when packed)."""
    if class_logits is None:
        return torch.ones_like(iou[:, :1])
    return class_logits.float().softmax(-1)


def prompt_batch(settings: EverythingSettings, device: torch.device) -> int:
    """Prompts per decoder pass: ``points_per_batch``, or when 0 the device's default."""
    return settings.points_per_batch or (CPU_BATCH if device.type == "cpu" else DEVICE_BATCH)


def decode_candidates(model: Saom, frame: Frame, points: np.ndarray,
                      settings: EverythingSettings, method: Callable[[str], Callable]
                      ) -> Candidates:
    """Decode (x, y) original-pixel points [n, 2]; keep the masks passing the IoU and
    stability filters. ``method(name)`` gives the model's (possibly compiled) method."""
    if len(points) == 0:  # the decoder needs a prompt: decode one, keep none of its masks
        one = decode_candidates(model, frame, np.zeros((1, 2)), settings, method)
        return one.select(slice(0, 0))
    s = settings
    pts = frame.to_input(points)
    orig = torch.as_tensor(points, dtype=torch.float32, device=pts.device).reshape(-1, 2)
    labels = torch.ones(pts.shape[0], 1, dtype=torch.int, device=pts.device)
    batch = prompt_batch(s, pts.device)
    starts = range(0, len(pts), batch)
    tokens = (method("decode_tokens")(frame.embedding, pts[i:i + batch, None, :],
                                      labels[i:i + batch]) for i in starts)
    # On an asynchronous device the next batch's token stage is queued before this batch's
    # filter waits for the device (it needs the surviving prompts on the host), so the device
    # does not idle; the CPU runs each op to its end and would only hold one more state.
    ahead = 0 if pts.device.type == "cpu" else 1
    cand = Candidates.cat([_filter_chunk(model, frame, state, start, s, method)
                           for start, state in zip(starts, _queued(tokens, ahead))])
    cand.point = orig[cand.prompt]
    return cand


def _queued(items: Iterator[T], ahead: int) -> Iterator[T]:
    """The items of ``items`` in order, each given while the next ``ahead`` are already made."""
    queue = collections.deque(itertools.islice(items, ahead))
    for item in items:
        queue.append(item)
        yield queue.popleft()
    yield from queue


def _filter_chunk(model: Saom, frame: Frame, state: DecoderTokens, offset: int,
                  s: EverythingSettings, method: Callable[[str], Callable]) -> Candidates:
    """One batch of prompts after the token stage: the IoU filter, masks, then the full-size
    filter. ``offset``: the batch's first prompt among the decoded points."""
    iou = state.iou_pred[:, 1:].float()
    n_masks = iou.shape[1]
    cls = class_probs(model.class_logits(state), iou)  # [B, C], one row per prompt
    passed = iou > s.pred_iou_thresh if s.pred_iou_thresh > 0 else torch.ones_like(
        iou, dtype=torch.bool)
    prompts = passed.any(1).nonzero()[:, 0]
    if len(prompts) < len(passed):  # else the image side is not copied
        state = state._replace(tokens=state.tokens[prompts], image=state.image[prompts])
    logits = method("decode_masks")(state, True, frame.extent).flatten(0, 1).float()
    keep = passed[prompts].flatten()
    if s.stability_score_thresh > 0:
        # Cheap pre-screen on the low-res logits; survivors are decided at full size.
        v = frame.valid
        stab = stability_scores(logits[:, :v[0], :v[1]], s.mask_threshold,
                                s.stability_score_offset, (-2, -1))
        keep &= stab >= s.stability_score_thresh - STABILITY_MARGIN
    # Indices, not bool masks, from here: each bool index waits for the device.
    rows = keep.nonzero()[:, 0]
    of_prompt = prompts[rows // n_masks]
    logits, iou, cls = logits[rows], iou[of_prompt, rows % n_masks], cls[of_prompt]
    stab, boxes = frame.stability_and_boxes(logits, s.mask_threshold, s.stability_score_offset)
    cand = Candidates(logits, iou, cls, stab, boxes.to(logits.device), of_prompt + offset,
                      logits.new_empty(len(rows), 2))
    # The generator drops boxes near crop edges; with one crop (the image) there are none.
    return cand.select(stab >= s.stability_score_thresh) if s.stability_score_thresh > 0 \
        else cand
