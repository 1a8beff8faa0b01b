"""One micro-batch's loss: masks assigned grid-point prompts, the decoder run, the mask losses."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch
from segment_anything.modeling.transformer import Attention
from torch import nn

from saom_ros.model import Saom
from saom_ros.training.assignment import (
    Assignment, add_interior_points, assign_nearest, assign_random, mask_coverage, resized_hw,
    to_model_frame)
from saom_ros.training.losses import LossWeights, mask_losses


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one image in one epoch (independent of process count and resume)."""
    return np.random.default_rng([seed, epoch, index])


@dataclasses.dataclass
class Prepared:
    """One training image on the device: embedding (frozen encoder) or input image, and targets."""

    index: int
    epoch: int
    image_hw: tuple[int, int]
    masks: torch.Tensor  # bool [N, H, W]
    class_ids: torch.Tensor  # int64 [N]
    image: Optional[torch.Tensor] = None  # [1, 3, S, S] when the encoder trains
    embedding: Optional[torch.Tensor] = None  # [1, C, h, w] when it is frozen


def unreached_parameters(model: Saom, weights: LossWeights) -> list[nn.Parameter]:
    """The parameters of ``model`` that no loss of this training reaches (given ``weights``).

    Always: the prompt encoder's negative-point and two box-corner embeddings and its mask
    input (every prompt mode gives positive points only, no boxes or masks), the decoder's
    single-mask output (training decodes multimask), and the key biases of the decoder's
    attentions (each adds the same score to all keys of a query, which the softmax cancels).
    A loss weight of 0 also leaves out what only that term trains: the IoU head (``iou``), the
    class head (``ce``), the mask upscaling and hypernetworks (``dice`` and ``focal``).
    """
    pe, md = model.sam.prompt_encoder, model.sam.mask_decoder
    modules = [pe.point_embeddings[0], pe.point_embeddings[2], pe.point_embeddings[3],
               pe.mask_downscaling, md.output_hypernetworks_mlps[0]]
    if weights.iou == 0:
        modules.append(md.iou_prediction_head)
    if weights.ce == 0 and model.class_head is not None:
        modules.append(model.class_head)
    if weights.dice == 0 and weights.focal == 0:
        modules += [md.output_upscaling, md.output_hypernetworks_mlps]
    key_biases = [m.k_proj.bias for m in md.transformer.modules()
                  if isinstance(m, Attention) and m.k_proj.bias is not None]
    return [p for m in modules for p in m.parameters()] + key_biases


class TrainStep(nn.Module):
    """Forward = the loss of one micro-batch, so DDP sees one forward per backward."""

    def __init__(self, model: Saom, cfg: dict) -> None:
        super().__init__()
        self.model = model
        self.seed = int(cfg["train"]["seed"])
        self.assign_cfg = cfg["assignment"]
        self.max_prompts = int(cfg["data"]["max_prompts_per_image"])
        lc = cfg["loss"]
        self.weights = LossWeights(dice=lc["dice"], focal=lc["focal"], ce=lc["ce"], iou=lc["iou"],
                                   focal_alpha=lc["focal_alpha"], focal_gamma=lc["focal_gamma"])
        self.selection = lc["mask_selection"]
        self.per_object = bool(lc["per_object"])
        # Before the optimizer is built over the parameters that require a gradient (finetune.py
        # sets the image encoder's flag first, then builds this, then AdamW and DDP): what this
        # training cannot reach gets no gradient, so AdamW does not decay it and DDP ignores it.
        for p in unreached_parameters(model, self.weights):
            p.requires_grad_(False)

    def assign(self, item: Prepared, embedding: torch.Tensor) -> Assignment:
        rng = sample_rng(self.seed, item.epoch, item.index)
        mode = self.assign_cfg["prompt_mode"]
        pps = int(self.assign_cfg["points_per_side"])
        size, min_coverage = self.model.config.img_size, float(self.assign_cfg["min_coverage"])
        if mode in ("nearest", "multi"):
            a = assign_nearest(embedding[0].detach(), item.masks, size, pps, min_coverage)
            if mode == "multi":
                a = add_interior_points(a, item.masks, pps,
                                        int(self.assign_cfg["points_per_mask"]), rng)
        elif mode == "random":  # the same masks as nearest: those kept on the embedding grid
            a = assign_random(item.masks, rng, size, embedding.shape[-1], min_coverage)
        else:
            raise ValueError(f"assignment.prompt_mode must be nearest, random or multi, "
                             f"not {mode!r}")
        if len(a.keep) > self.max_prompts:
            pick = np.sort(rng.choice(len(a.keep), self.max_prompts, replace=False))
            a = Assignment(a.keep[pick], a.points[pick], a.grid_index[pick])
        return a

    def image_loss(self, item: Prepared, embedding: torch.Tensor) -> Optional[dict]:
        a = self.assign(item, embedding)
        if len(a.keep) == 0:
            return None
        size = self.model.config.img_size
        keep = torch.as_tensor(a.keep, device=item.masks.device)
        coords = torch.as_tensor(to_model_frame(a.points, item.image_hw, size),
                                 dtype=torch.float32, device=embedding.device)[:, None]
        # positive points only (unreached_parameters leaves the negative-point embedding untrained)
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=embedding.device)
        out = self.model.decode(embedding, coords, labels, multimask=True)
        low = out.low_res_logits.shape[-1]
        rh, rw = resized_hw(item.image_hw, size)
        oh, ow = -(-rh * low // size), -(-rw * low // size)  # drop the padding, as at inference
        targets = (mask_coverage(item.masks[keep], item.image_hw, size, low) >= 0.5).float()
        class_ids = item.class_ids[keep] if self.model.class_head is not None else None
        weights = None
        if self.per_object:  # each object weighs 1 / objects, shared by its prompts
            counts = torch.bincount(keep)[keep].float()
            weights = 1.0 / (counts * len(torch.unique(keep)))
        losses = mask_losses(out.low_res_logits[..., :oh, :ow], out.iou_pred, out.class_logits,
                             targets[:, :oh, :ow], class_ids, self.weights, self.selection,
                             weights)
        return {**losses, "prompts": len(a.keep)}

    def forward(self, items: list[Prepared]) -> tuple[torch.Tensor, dict[str, float]]:
        if items and items[0].image is not None:
            embeddings = self.model.embed(torch.cat([it.image for it in items]))
            embeddings = [embeddings[i:i + 1] for i in range(len(items))]
        else:
            embeddings = [it.embedding for it in items]
        # A zero that touches every trainable parameter, so that backward (and DDP's all-reduce)
        # still works should all of a rank's images lose their masks in the assignment. It
        # changes no gradient: trainable parameters are the ones a prompt's loss reaches
        # (unreached_parameters are frozen) and images without a mask that the assignment keeps
        # are left out of training up front, so each micro-batch's loss reaches them anyway (a
        # mask output's hypernetwork gets a zero gradient, and AdamW's decay, when no prompt
        # selects that output: decay of trained parameters, as in the reference code).
        total = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        stats: dict[str, float] = {"prompts": 0.0}
        for item, emb in zip(items, embeddings):
            losses = self.image_loss(item, emb)
            if losses is None:
                continue
            total = total + losses["total"] / len(items)
            stats["prompts"] += losses.pop("prompts")
            losses["loss"] = losses.pop("total").detach()
            for k, v in losses.items():
                stats[k] = stats.get(k, 0.0) + float(v) / len(items)
        return total, stats
