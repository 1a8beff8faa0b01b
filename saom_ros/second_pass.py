"""The second decoder pass of the two-pass prompt strategies (hierarchical, streaming): which
full-grid points a first pass's masks leave unexplained, and so are decoded next.

A first pass runs with its filters lowered by NEAR_PASS, so that masks that nearly passed still
mark where an object may be. Its kept masks of high enough predicted IoU are confident: the
object there is found. The second pass decodes the full-grid points inside new near masks and
inside no confident one (``unexplained``), less the points the first pass decoded (``among``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torchvision.ops import nms

from saom_ros import prompts
from saom_ros.candidates import LOW_RES_PER_EMBEDDING, Candidates, Frame
from saom_ros.everything_settings import EverythingSettings

# hierarchical: coarse masks that pass the predicted-IoU and stability filters or miss them by at
# most this still mark where the full grid may find an object; where no such mask reaches, the
# full grid is not decoded (see unexplained).
NEAR_PASS = 0.05
# hierarchical: a near mask leads to full-grid points only when at least this fraction of it is
# outside the confident masks; a mere variant of a found object does not.
NEW_FRACTION = 0.3
# hierarchical: a confident mask below this predicted IoU gets a second-pass point at its deepest
# pixel, as every new near mask does (``deepest_points``).
DEEP_BELOW_IOU = 0.5


def near_pass(s: EverythingSettings) -> EverythingSettings:
    """``s`` with both mask filters lowered by NEAR_PASS (a threshold at or below 0 is off)."""
    return dataclasses.replace(s, pred_iou_thresh=s.pred_iou_thresh - NEAR_PASS,
                               stability_score_thresh=s.stability_score_thresh - NEAR_PASS)


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


def unexplained(frame: Frame, near: torch.Tensor, confident: torch.Tensor,
                 points: np.ndarray, threshold: float) -> np.ndarray:
    """bool [P]: the full-grid ``points`` the hierarchical strategy decodes, given the low-res
    logits of the coarse masks that passed the filters or nearly did (``near``, see NEAR_PASS)
    and of the confident ones.

    A point is decoded when it lies inside a new near mask (at least NEW_FRACTION of it outside
    the confident masks) and inside no confident mask. Points inside a confident mask are
    covered: the object is found. Points outside every near mask are skipped too: no coarse
    prompt gave a mask reaching them that passes the filters or misses them by NEAR_PASS at
    most, so that region is one the model refuses (for SAOM-small the wall and floor, ~75% of
    the grid), and denser prompts there are expected to give rejected masks as well. So an
    object that no coarse point hits and no near mask reaches is missed: the coarse spacing
    bounds the smallest object found.
    """
    if len(points) == 0 or len(near) == 0:
        return np.zeros(len(points), bool)
    inside = _at_points(frame, near[_new(frame, near, confident, threshold)], points,
                        threshold).any(0)
    if len(confident):
        inside &= ~_at_points(frame, confident, points, threshold).any(0)
    return inside.cpu().numpy()


def _new(frame: Frame, near: torch.Tensor, confident: torch.Tensor, threshold: float
         ) -> torch.Tensor:
    """bool [N]: the near masks (low-res logits [N, h, w]) with at least NEW_FRACTION of their
    pixels outside the confident ones."""
    near_masks = _low_res(frame, near, threshold)
    known = _low_res(frame, confident, threshold).any(0)
    area = near_masks.flatten(1).sum(1).clamp(min=1)
    return (near_masks & ~known).flatten(1).sum(1) >= NEW_FRACTION * area


def deepest_points(frame: Frame, near: Candidates, confident: Candidates, threshold: float,
                   nms_thresh: float) -> np.ndarray:
    """[K, 2] points (x, y original pixels) that hierarchical decodes besides the full grid's:
    the deepest pixel (``prompts.inside_points``, on the low-res mask) of each new near mask
    that box NMS keeps and of each confident mask of predicted IoU below DEEP_BELOW_IOU.

    The full-grid points inside such a mask may all lie near its border, where prompts give
    parts or neighbours; its deepest point is the one most likely to give the whole object.
    """
    new = near.select(_new(frame, near.logits, confident.logits, threshold))
    new = new.select(nms(new.boxes, new.iou, nms_thresh))
    logits = torch.cat([new.logits, confident.logits[confident.iou < DEEP_BELOW_IOU]])
    if len(logits) == 0:
        return np.zeros((0, 2), np.float32)
    points, _ = prompts.inside_points(_low_res(frame, logits, threshold).cpu().numpy())
    # Low-res pixels -> model input pixels -> original pixels.
    scale = np.array([frame.orig_hw[1] / frame.input_hw[1], frame.orig_hw[0] / frame.input_hw[0]])
    return (points * (frame.patch_size // LOW_RES_PER_EMBEDDING) * scale).astype(np.float32)
