"""Loss values on inputs whose answer is known."""
from __future__ import annotations

import math

import pytest
import torch

from saom_ros.training.losses import LossWeights, dice_loss, focal_loss, mask_iou, mask_losses

BIG = 30.0  # a logit whose sigmoid is 1 to float precision


def test_dice_perfect_wrong_and_half():
    t = torch.zeros(2, 8, 8)
    t[:, 2:6, 2:6] = 1
    assert dice_loss(BIG * (2 * t - 1), t).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(-BIG * (2 * t - 1), t).item() == pytest.approx(1 - 1 / 65, abs=1e-6)  # |P| 48, |T| 16
    # logits 0 -> p = 0.5 everywhere: 1 - (2 * 0.5 * 16 + 1) / (0.5 * 64 + 16 + 1)
    assert dice_loss(torch.zeros(2, 8, 8), t).item() == pytest.approx(1 - 17 / 49, abs=1e-6)


def test_focal_matches_its_formula():
    x = torch.full((1, 4, 4), 0.7)
    t = torch.ones(1, 4, 4)
    p = 1 / (1 + math.exp(-0.7))
    expected = -0.25 * (1 - p) ** 2 * math.log(p)
    assert focal_loss(x, t).item() == pytest.approx(expected, rel=1e-5)
    t0 = torch.zeros(1, 4, 4)
    expected0 = -0.75 * p ** 2 * math.log(1 - p)
    assert focal_loss(x, t0).item() == pytest.approx(expected0, rel=1e-5)


def test_mask_iou():
    t = torch.zeros(1, 4, 4)
    t[0, :2] = 1  # 8 pixels
    logits = -torch.ones(1, 4, 4)
    logits[0, 1:3] = 1  # 8 pixels, 4 shared
    assert mask_iou(logits, t).item() == pytest.approx(4 / 12)
    assert mask_iou(-torch.ones(1, 4, 4), torch.zeros(1, 4, 4)).item() == 1.0


def _three_outputs(t: torch.Tensor) -> torch.Tensor:
    """Outputs per prompt: [wrong, right, half right]."""
    half = t.clone()
    half[..., :, 4:] = 0
    return torch.stack([-BIG * (2 * t - 1), BIG * (2 * t - 1), BIG * (2 * half - 1)], 1)


def test_selection_rules_pick_the_expected_output():
    t = torch.zeros(1, 8, 8)
    t[0, 2:6, 2:8] = 1
    logits = _three_outputs(t)
    iou_pred = torch.tensor([[0.9, 0.1, 0.2]])  # an uncalibrated head prefers the wrong one
    w = LossWeights(ce=0.0, iou=0.0)
    best = mask_losses(logits, iou_pred, None, t, None, w, "best_gt_iou")
    pred = mask_losses(logits, iou_pred, None, t, None, w, "max_pred_iou")
    assert best["dice"].item() == pytest.approx(0.0, abs=1e-6)
    assert pred["dice"].item() > 0.9
    with pytest.raises(ValueError, match="mask_selection"):
        mask_losses(logits, iou_pred, None, t, None, w, "first")


def test_iou_loss_is_mse_to_actual_iou_and_can_be_switched_off():
    t = torch.zeros(1, 8, 8)
    t[0, 2:6, 2:8] = 1  # 24 pixels; the half-right output keeps 8 of them
    logits = _three_outputs(t)
    actual = torch.tensor([[0.0, 1.0, 8 / 24]])
    calibrated = mask_losses(logits, actual, None, t, None, LossWeights())
    assert calibrated["iou"].item() == pytest.approx(0.0, abs=1e-7)
    off = torch.tensor([[0.5, 0.5, 0.5]])
    on = mask_losses(logits, off, None, t, None, LossWeights())
    expected = ((0.5 - actual) ** 2).mean().item()
    assert on["iou"].item() == pytest.approx(expected, rel=1e-6)
    assert on["total"].item() == pytest.approx(
        (on["dice"] + on["focal"]).item() + expected, rel=1e-6)
    without = mask_losses(logits, off, None, t, None, LossWeights(iou=0.0))
    assert without["total"].item() == pytest.approx((on["dice"] + on["focal"]).item(), rel=1e-6)


def test_cross_entropy_and_weights():
    t = torch.ones(2, 4, 4)
    logits = BIG * torch.ones(2, 3, 4, 4)
    iou = torch.ones(2, 3)
    uniform = torch.zeros(2, 5)
    out = mask_losses(logits, iou, uniform, t, torch.tensor([1, 5]), LossWeights(ce=2.0))
    assert out["ce"].item() == pytest.approx(math.log(5), rel=1e-6)
    assert out["total"].item() == pytest.approx(
        2 * math.log(5) + (out["dice"] + out["focal"]).item(), rel=1e-5)
    sure = torch.full((2, 5), -BIG)
    sure[0, 0] = sure[1, 4] = BIG  # class ids 1 and 5 are logits 0 and 4
    assert mask_losses(logits, iou, sure, t, torch.tensor([1, 5]),
                       LossWeights())["ce"].item() == pytest.approx(0.0, abs=1e-6)
    agnostic = mask_losses(logits, iou, None, t, None, LossWeights())
    assert "ce" not in agnostic


def test_gradients_reach_logits_iou_and_classes():
    t = torch.zeros(2, 8, 8)
    t[:, :4] = 1
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    iou = torch.rand(2, 3, requires_grad=True)
    cls = torch.randn(2, 4, requires_grad=True)
    mask_losses(logits, iou, cls, t, torch.tensor([2, 3]), LossWeights())["total"].backward()
    assert logits.grad.abs().sum() > 0 and iou.grad.abs().sum() > 0 and cls.grad.abs().sum() > 0


@pytest.mark.parametrize("off", ["iou", "ce"])
def test_a_zero_weight_term_is_reported_but_gives_no_gradient(off):
    """Not even a zero one: AdamW skips a parameter without a gradient, but decays one whose
    gradient is 0 (the IoU head of the iou=0 ablation would shrink)."""
    t = torch.zeros(2, 8, 8)
    t[:, :4] = 1
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    iou = torch.rand(2, 3, requires_grad=True)
    cls = torch.randn(2, 4, requires_grad=True)
    out = mask_losses(logits, iou, cls, t, torch.tensor([2, 3]), LossWeights(**{off: 0.0}))
    assert out[off].item() > 0
    out["total"].backward()
    assert {"iou": iou, "ce": cls}[off].grad is None
    assert logits.grad.abs().sum() > 0


def test_prompt_weights_weigh_every_term():
    t = torch.zeros(3, 8, 8)
    t[:, 2:6, 2:6] = 1
    logits = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    iou = torch.rand(3, 3, generator=torch.Generator().manual_seed(1))
    cls = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([1, 2, 4])
    plain = mask_losses(logits, iou, cls, t, ids, LossWeights())
    uniform = mask_losses(logits, iou, cls, t, ids, LossWeights(),
                          prompt_weights=torch.full((3,), 1 / 3))
    only_last = mask_losses(logits, iou, cls, t, ids, LossWeights(),
                            prompt_weights=torch.tensor([0.0, 0.0, 1.0]))
    alone = mask_losses(logits[2:], iou[2:], cls[2:], t[2:], ids[2:], LossWeights())
    for k in ("total", "dice", "focal", "iou", "ce"):
        assert uniform[k].item() == pytest.approx(plain[k].item(), rel=1e-5)
        assert only_last[k].item() == pytest.approx(alone[k].item(), rel=1e-5)
