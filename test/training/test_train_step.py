"""TrainStep trains exactly what its losses reach: the rest keeps no gradient, so AdamW's weight
decay leaves it alone (the IoU head of the ``loss.iou: 0`` ablation stays as initialised)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from saom_ros.model import ModelConfig, build_saom
from saom_ros.training.config import load_config
from saom_ros.training.train_step import Prepared, TrainStep

CLASSES = ("Mug", "Vase", "Laptop")
HW = (96, 128)


def _items(model, n: int = 2) -> list[Prepared]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        masks = torch.zeros(3, *HW, dtype=torch.bool)
        for k in range(3):
            y, x = rng.integers(5, 50), rng.integers(5, 80)
            masks[k, y:y + 30, x:x + 40] = True
        image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            emb = model.embed(image)
        items.append(Prepared(i, 0, HW, masks, torch.tensor([1, 2, 3]), embedding=emb))
    return items


def _step(*overrides: str, class_agnostic: bool = False) -> TrainStep:
    cfg = load_config(None, ["model.model_type=tiny", "assignment.points_per_side=8",
                             *overrides])
    torch.manual_seed(0)
    model = build_saom(ModelConfig.preset("tiny", 0 if class_agnostic else len(CLASSES)),
                       () if class_agnostic else CLASSES)
    model.sam.image_encoder.requires_grad_(False)  # as finetune.py, before TrainStep
    return TrainStep(model, cfg)


def _frozen(step: TrainStep) -> set[str]:
    return {k for k, p in step.model.named_parameters()
            if not p.requires_grad and not k.startswith("sam.image_encoder")}


UNREACHABLE = {"sam.prompt_encoder.point_embeddings.0.weight",  # negative points
               "sam.prompt_encoder.point_embeddings.2.weight",  # box corners
               "sam.prompt_encoder.point_embeddings.3.weight",
               # attention key biases: a constant per query, cancelled by the softmax
               *(f"sam.mask_decoder.transformer.layers.{i}.{a}.k_proj.bias" for i in (0, 1)
                 for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")),
               "sam.mask_decoder.transformer.final_attn_token_to_image.k_proj.bias"}


@pytest.mark.parametrize("overrides,extra", [
    ((), ()),
    (("loss.iou=0",), ("sam.mask_decoder.iou_prediction_head.",)),
    (("loss.ce=0",), ("class_head.",)),
    (("loss.iou=0", "assignment.prompt_mode=random"), ("sam.mask_decoder.iou_prediction_head.",)),
    (("assignment.prompt_mode=multi", "loss.mask_selection=max_pred_iou"), ()),
])
def test_trainable_parameters_are_exactly_those_the_loss_reaches(overrides, extra):
    step = _step(*overrides)
    frozen = _frozen(step)
    expected = UNREACHABLE | {k for k, _ in step.model.named_parameters() if k.startswith(
        ("sam.prompt_encoder.mask_downscaling.", "sam.mask_decoder.output_hypernetworks_mlps.0.",
         *extra))}
    assert frozen == expected
    # without the forward's zero term: every trainable parameter gets a gradient, not zero
    # (a mask output's hypernetwork only when some prompt's loss selects that output)
    total = sum(step.image_loss(it, it.embedding)["total"] for it in _items(step.model))
    total.backward()
    for k, p in step.model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, k
        elif k.startswith("sam.mask_decoder.output_hypernetworks_mlps."):
            assert p.grad is not None, k
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, k


def test_iou_ablation_leaves_the_iou_head_and_unused_prompt_parts_as_initialised():
    step = _step("loss.iou=0")
    start = {k: v.clone() for k, v in step.model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.5)
    items = _items(step.model)
    for _ in range(3):
        loss, stats = step(items)
        assert stats["prompts"] > 0 and stats["iou"] > 0  # still logged
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    end = step.model.state_dict()
    untouched = [k for k in start if k.startswith(
        ("sam.mask_decoder.iou_prediction_head.", "sam.prompt_encoder.mask_downscaling.",
         "sam.mask_decoder.output_hypernetworks_mlps.0.", "sam.image_encoder."))] + \
        sorted(UNREACHABLE)
    assert any(k.startswith("sam.mask_decoder.iou_prediction_head.") for k in untouched)
    for k in untouched:
        assert torch.equal(start[k], end[k]), k
    assert not torch.equal(start["sam.mask_decoder.iou_token.weight"],
                           end["sam.mask_decoder.iou_token.weight"])
    assert not torch.equal(start["class_head.weight"], end["class_head.weight"])


def test_class_agnostic_without_mask_losses_trains_no_mask_output():
    step = _step("loss.dice=0", "loss.focal=0", class_agnostic=True)
    frozen = _frozen(step)
    assert {k for k in frozen if k.startswith("sam.mask_decoder.output_")} == {
        k for k, _ in step.model.named_parameters()
        if k.startswith(("sam.mask_decoder.output_upscaling.",
                         "sam.mask_decoder.output_hypernetworks_mlps."))}
    assert "sam.mask_decoder.iou_prediction_head.layers.0.weight" not in frozen
