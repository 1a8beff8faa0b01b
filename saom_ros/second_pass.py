"""The second decoder pass of the two-pass prompt strategies (hierarchical, streaming): which
full-grid points a first pass's masks leave unexplained, and which of them are decoded next.

A first pass runs with its filters lowered by NEAR_PASS, so that masks that nearly passed still
mark where an object may be. Its kept masks of high enough predicted IoU are confident: the
object there is found. Of the full-grid points inside new near masks (``new_masks``) and inside
no confident one, each new mask has its deepest few decoded (``spread_over_new_masks``), less the
points the first pass decoded (``among``).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import torch
from torchvision.ops import nms

from saom_ros.candidates import LOW_RES_PER_EMBEDDING, Candidates, Frame
from saom_ros.everything_settings import EverythingSettings

# hierarchical: coarse masks that pass the predicted-IoU and stability filters or miss them by at
# most this still mark where the full grid may find an object; where no such mask reaches, the
# full grid is not decoded (see spread_over_new_masks).
NEAR_PASS = 0.05
# hierarchical: a near mask leads to full-grid points only when at least this fraction of it is
# outside the confident masks; a mere variant of a found object does not. A ratio of integers,
# compared exactly: 0.3 * area in floating point exceeds 30 for 100 pixels.
NEW_FRACTION = (3, 10)


def near_pass(s: EverythingSettings) -> EverythingSettings:
    """``s`` with both mask filters lowered by NEAR_PASS (not below 0, which is off anyway)."""
    return dataclasses.replace(s, pred_iou_thresh=max(0.0, s.pred_iou_thresh - NEAR_PASS),
                               stability_score_thresh=max(0.0,
                                                          s.stability_score_thresh - NEAR_PASS))


def passes(cand: Candidates, s: EverythingSettings) -> torch.Tensor:
    """bool [N]: the candidates that pass the filters of ``s`` (as decode_candidates applies
    them: a threshold of 0 filters nothing)."""
    ok = torch.ones(len(cand), dtype=torch.bool, device=cand.iou.device)
    if s.pred_iou_thresh > 0:
        ok &= cand.iou > s.pred_iou_thresh
    if s.stability_score_thresh > 0:
        ok &= cand.stability >= s.stability_score_thresh
    return ok


def among(points: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """bool [n]: the points of ``points`` [n, 2] that are also in ``decoded`` [m, 2] (float32).

    Each point is one complex number (x + iy, equal when both coordinates are), so the test is
    one sort instead of an [n, m] comparison (a 32x32 grid against a 16x16 one: 6 ms)."""
    def as_complex(p: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(p, np.float32).reshape(-1, 2).view(np.complex64)[:, 0]
    return np.isin(as_complex(points), as_complex(decoded))


def _low_res(frame: Frame, logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool [N, h, w]: the masks of low-res ``logits`` [N, h', w'] where the image is."""
    v = frame.valid
    return logits[:, :v[0], :v[1]] > threshold


def _at_points(frame: Frame, logits: torch.Tensor, points: np.ndarray,
               threshold: float) -> torch.Tensor:
    """bool [N, P]: whether each low-res mask ``logits`` [N, h, w] holds each point (x, y
    original pixels), its logit read bilinearly there (as the full-size mask would have it,
    up to the rounding of two resizes)."""
    # A low-res pixel is patch_size // LOW_RES_PER_EMBEDDING input pixels wide; the logits
    # start at the input's top-left corner.
    span = torch.tensor([logits.shape[-1], logits.shape[-2]], device=logits.device) * \
        (frame.patch_size // LOW_RES_PER_EMBEDDING)
    xy = frame.to_input(points) / span * 2 - 1
    at = torch.nn.functional.grid_sample(logits[None].float(), xy[None, None], mode="bilinear",
                                         padding_mode="border", align_corners=False)
    return at[0, :, 0] > threshold


def new_masks(frame: Frame, near: Candidates, confident: Candidates, threshold: float,
              nms_thresh: float) -> torch.Tensor:
    """The low-res logits [N, h, w] of the near masks (see NEAR_PASS) with at least NEW_FRACTION
    of their pixels outside the ``confident`` ones, where the first pass found something it has
    not explained: first those that box NMS keeps, then those it removes, each group by
    descending predicted IoU."""
    index = _new(frame, near.logits, confident.logits, threshold).nonzero()[:, 0]
    iou = near.iou[index]
    kept = nms(near.boxes[index], iou, nms_thresh)
    removed = torch.ones(len(index), dtype=torch.bool, device=index.device)
    removed[kept] = False
    removed = removed.nonzero()[:, 0]
    removed = removed[torch.argsort(iou[removed], descending=True, stable=True)]
    return near.logits[index[torch.cat([kept, removed])]]


def spread_over_new_masks(frame: Frame, new: torch.Tensor, confident: torch.Tensor,
                          points: np.ndarray, threshold: float,
                          per_mask: int) -> np.ndarray:
    """bool [P]: the full-grid ``points`` that the second pass decodes, given the low-res logits
    of the first pass's new masks (``new_masks``) and of its confident ones.

    A point is a candidate when it lies inside a new mask and inside no confident mask. Points
    inside a confident mask are covered: the object is found. Points outside every new mask are
    skipped too: no first-pass prompt gave a mask reaching them that passes the filters or
    misses them by NEAR_PASS at most, so that region is one the model refuses (for SAOM-small
    the wall and floor, ~75% of the grid), and denser prompts there are expected to give
    rejected masks as well. So an object that no coarse point hits and no near mask reaches is
    missed: the coarse spacing bounds the smallest object found.

    Each new mask in turn (``new_masks``' order) takes up to ``per_mask`` (0: all) of the
    candidates inside it that no mask before it took, the deepest first (the distance transform
    of its low-res mask at the point). Inside a large new mask a dozen grid points mostly give
    its object again; a few deep ones give its best masks, and the overlapping variants that
    NMS removes spread further points over the same region.
    """
    taken = np.zeros(len(points), bool)
    if len(points) == 0 or len(new) == 0:
        return taken
    inside = _at_points(frame, new, points, threshold)
    if len(confident):
        inside &= ~_at_points(frame, confident, points, threshold).any(0)
    inside = inside.cpu().numpy()
    if per_mask == 0:
        return inside.any(0)
    masks = _low_res(frame, new, threshold).cpu().numpy()
    for mask, free in zip(masks, inside):
        order = np.flatnonzero(free & ~taken)
        if len(order) > per_mask:  # only then does depth choose among them
            order = order[np.argsort(-_depth_at(frame, mask, points[order]), kind="stable")]
        taken[order[:per_mask]] = True
    return taken


def _depth_at(frame: Frame, mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """float [P]: a mask's (bool [h, w], low-res) distance to its border at the low-res pixel of
    each point."""
    step = frame.patch_size // LOW_RES_PER_EMBEDDING
    scale = np.array([frame.input_hw[1] / frame.orig_hw[1], frame.input_hw[0] / frame.orig_hw[0]])
    pixel = (points * scale / step).astype(np.int64)
    x = np.clip(pixel[:, 0], 0, mask.shape[1] - 1)
    y = np.clip(pixel[:, 1], 0, mask.shape[0] - 1)
    # A one-pixel zero border: the image's edge counts as the mask's border.
    bordered = cv2.copyMakeBorder(mask.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return cv2.distanceTransform(bordered, cv2.DIST_L2, 5)[y + 1, x + 1]


def _new(frame: Frame, near: torch.Tensor, confident: torch.Tensor, threshold: float
         ) -> torch.Tensor:
    """bool [N]: the near masks (low-res logits [N, h, w]) with at least NEW_FRACTION of their
    pixels outside the confident ones."""
    near_masks = _low_res(frame, near, threshold)
    known = _low_res(frame, confident, threshold).any(0)
    area = near_masks.flatten(1).sum(1).clamp(min=1)
    outside = (near_masks & ~known).flatten(1).sum(1)
    return outside * NEW_FRACTION[1] >= NEW_FRACTION[0] * area
