"""Training losses: dice + sigmoid focal on masks, cross-entropy on classes, MSE on predicted IoU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; a weight of 0 switches its term off (e.g. ``iou`` for ablation)."""

    dice: float = 1.0
    focal: float = 1.0
    ce: float = 1.0
    iou: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def _mean(values: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of per-mask ``values`` [N], or their sum weighted by ``weights`` [N] (sums to 1)."""
    return values.mean() if weights is None else (values * weights).sum()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0,
              weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over masks of 1 - (2|P.T| + eps) / (|P| + |T| + eps), P = sigmoid(logits). [N,H,W]."""
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    return _mean(1.0 - (2.0 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps), weights)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sigmoid focal loss (torchvision), mean over pixels and masks."""
    per_mask = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma,
                                  reduction="none").flatten(1).mean(1)
    return _mean(per_mask, weights)


@torch.no_grad()
def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the binarised prediction (logit > 0) with the target. [..., H, W] -> [...]."""
    pred = logits > 0
    gt = targets > 0.5
    inter = (pred & gt).flatten(-2).sum(-1).float()
    union = (pred | gt).flatten(-2).sum(-1).float()
    # both empty: a perfect answer
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_losses(low_res_logits: torch.Tensor, iou_pred: torch.Tensor,
                class_logits: torch.Tensor | None, targets: torch.Tensor,
                class_ids: torch.Tensor | None, weights: LossWeights,
                selection: str = "best_gt_iou",
                prompt_weights: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """All loss terms for one image's prompt batch.

    low_res_logits [N, M, h, w] (M mask outputs per prompt), iou_pred [N, M], class_logits
    [N, C] or None (class-agnostic), targets float [N, h, w] in {0, 1}, class_ids [N] (1..C).
    The mask losses train one output per prompt: ``best_gt_iou`` (the output closest to the
    ground truth, SAM's own minimum-loss rule) or ``max_pred_iou`` (the reference code's rule,
    which early on follows an uncalibrated IoU head). The IoU loss trains every output's
    predicted IoU towards its actual IoU, so part-masks learn low scores and everything mode's
    pred_iou filter drops them. ``prompt_weights`` [N] (summing to 1) weigh the prompts in
    every term instead of a plain mean (e.g. each object equally however many prompts it has).
    Returns the weighted ``total`` and each unweighted term; a term weighted 0 is reported but
    not part of ``total`` (no gradient reaches what only it would train).
    """
    logits = low_res_logits.float()
    actual_iou = mask_iou(logits, targets[:, None])  # [N, M]
    if selection not in ("best_gt_iou", "max_pred_iou"):
        raise ValueError(f"mask_selection must be best_gt_iou or max_pred_iou, not {selection!r}")
    score = actual_iou if selection == "best_gt_iou" else iou_pred.detach().float()
    best = score.argmax(1)
    chosen = logits[torch.arange(len(best), device=best.device), best]
    def weighted(name: str) -> bool:  # a term with weight 0 is computed for the log only
        return getattr(weights, name) != 0

    terms = {}
    with torch.set_grad_enabled(torch.is_grad_enabled() and weighted("dice")):
        terms["dice"] = dice_loss(chosen, targets, weights=prompt_weights)
    with torch.set_grad_enabled(torch.is_grad_enabled() and weighted("focal")):
        terms["focal"] = focal_loss(chosen, targets, weights.focal_alpha, weights.focal_gamma,
                                    prompt_weights)
    with torch.set_grad_enabled(torch.is_grad_enabled() and weighted("iou")):
        terms["iou"] = _mean(((iou_pred.float() - actual_iou) ** 2).mean(1), prompt_weights)
    if class_logits is not None and class_ids is not None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and weighted("ce")):
            terms["ce"] = _mean(F.cross_entropy(class_logits.float(), class_ids.long() - 1,
                                                reduction="none"), prompt_weights)
    # zero-weight terms stay out of the sum: their parameters get no gradient (None, not 0),
    # which AdamW skips instead of decaying them
    total = sum((getattr(weights, k) * v for k, v in terms.items() if weighted(k)),
                logits.new_zeros(()))
    return {"total": total, **{k: v.detach() for k, v in terms.items()}}
