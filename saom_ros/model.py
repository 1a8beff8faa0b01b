"""SAOM: segment_anything's Sam plus a class head on the decoder's IoU-token output.

Builds the official sizes (vit_h, vit_l, vit_b) and small test/embedded configurations from
segment_anything's own blocks, and loads SAOM checkpoints or official ``sam_vit_*.pth`` files.
"""
from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from segment_anything.modeling import (
    ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer)
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.functional import resize, to_pil_image

from saom_ros.atomic import atomic_open
from saom_ros.checkpoint_fields import (CheckpointError, check_class_count, checked_class_names,
                                       checked_config, checked_everything, checked_state)
from saom_ros.classes import AGNOSTIC_CLASSES
from saom_ros.decoder import DecoderTokens, run_tokens, upscale_masks
from saom_ros.model_config import PRESETS, ModelConfig

FORMAT = "saom"
FORMAT_VERSION = 1
_SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


class DecoderOutput(NamedTuple):
    """Decoder results, one row per prompt."""

    low_res_logits: torch.Tensor  # [B, M, 4h, 4w]
    iou_pred: torch.Tensor  # [B, M]
    class_logits: Optional[torch.Tensor]  # [B, num_classes] or None


def _build_sam(config: ModelConfig) -> Sam:
    """segment_anything's _build_sam, with every size taken from ``config``."""
    dim = config.prompt_embed_dim
    grid = config.img_size // config.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth, embed_dim=config.encoder_embed_dim,
            img_size=config.img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=config.encoder_num_heads,
            patch_size=config.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size, out_chans=dim),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size), mask_in_chans=16),
        # Official sizes: mlp 2048 and IoU-head 256 for dim 256; small models scale with dim.
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=8 * dim, num_heads=8),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


class Saom(nn.Module):
    """Sam plus a linear class head on the decoder's IoU-token output (None: class-agnostic)."""

    def __init__(self, sam: Sam, config: ModelConfig, class_names: Sequence[str]) -> None:
        super().__init__()
        self.sam = sam
        self.config = config
        self.class_names = tuple(class_names)
        self.class_head = (nn.Linear(config.prompt_embed_dim, config.num_classes)
                           if config.num_classes > 0 else None)
        self._transform = ResizeLongestSide(config.img_size)
        # What a SAOM checkpoint carries besides weights (empty for official SAM files):
        # everything-mode settings it was evaluated with (EverythingSettings field -> value)
        # and free-form metadata (training source, step, config).
        self.everything: dict[str, Any] = {}
        self.metadata: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return self.sam.pixel_mean.device

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, C, h, w] of normalised, padded images [B, 3, S, S]."""
        return self.sam.image_encoder(images)

    def decode_tokens(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                      point_labels: torch.Tensor) -> DecoderTokens:
        """The decoder's transformer and IoU head for point prompts (model input pixels)."""
        return run_tokens(self.sam.mask_decoder, image_embeddings,
                          *self.prompt_inputs(point_coords, point_labels))

    def prompt_inputs(self, point_coords: torch.Tensor, point_labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``run_tokens``' inputs besides the image embedding, in the decoder's dtype: the dense
        positional encoding [1, C, h, w] and the sparse and dense prompt embeddings of point
        prompts (model input pixels)."""
        encoder = self.sam.prompt_encoder
        sparse = point_embeddings(encoder, point_coords, point_labels)
        # The no-mask embedding, broadcast over the prompts (as PromptEncoder.forward).
        dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            sparse.shape[0], -1, *encoder.image_embedding_size)
        dtype = self.sam.mask_decoder.iou_token.weight.dtype  # the prompt encoder may differ
        return (self.sam.prompt_encoder.get_dense_pe().to(dtype), sparse.to(dtype),
                broadcast_to_dtype(dense, dtype))

    def decode_masks(self, state: DecoderTokens, multimask: bool = True,
                     extent: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """Low-res mask logits [B, 3 or 1, 4h', 4w'] of ``decode_tokens``' prompts."""
        indices = range(1, self.sam.mask_decoder.num_mask_tokens) if multimask else [0]
        return upscale_masks(self.sam.mask_decoder, state, indices, extent)

    def class_logits(self, state: DecoderTokens) -> Optional[torch.Tensor]:
        """Class logits [B, num_classes] from the IoU-token output; None when class-agnostic."""
        return self.class_head(state.tokens[:, 0]) if self.class_head is not None else None

    def decode(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
               point_labels: torch.Tensor, multimask: bool = True,
               extent: Optional[tuple[int, int]] = None) -> DecoderOutput:
        """Masks, IoU predictions and class logits for point prompts (model input pixels).

        ``extent``: embedding rows and columns to make masks for (None: all); the masks there
        equal the top-left part of the full ones.
        """
        state = self.decode_tokens(image_embeddings, point_coords, point_labels)
        iou = state.iou_pred[:, 1:] if multimask else state.iou_pred[:, :1]
        return DecoderOutput(self.decode_masks(state, multimask, extent), iou,
                             self.class_logits(state))

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize an RGB uint8 HxWx3 image by its longest side, normalise and pad it.

        On the CPU the resize is segment_anything's (PIL); on an accelerator the image goes to
        the device as it is and is resized there (``resize_on_device``), which took 20 ms of a
        ~100 ms frame off the host on an H100 machine.
        """
        target = self._transform.get_preprocess_shape(*image.shape[:2], self.config.img_size)
        # ResizeLongestSide.apply_image, except that a very thin image (1000x1 at a 256-pixel
        # input) keeps a 1-pixel short side instead of rounding it to 0.
        target = [max(1, side) for side in target]
        if self.device.type == "cpu":
            resized = np.array(resize(to_pil_image(image), target))
            x = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
        else:
            x = resize_on_device(torch.as_tensor(image).to(self.device, non_blocking=True), target)
        return self.sam.preprocess(x), (x.shape[-2], x.shape[-1])


def point_embeddings(encoder: PromptEncoder, coords: torch.Tensor, labels: torch.Tensor
                     ) -> torch.Tensor:
    """The sparse embeddings [B, N + 1, C] that ``encoder`` gives point prompts (coords
    [B, N, 2] model input pixels, labels [B, N]) with no box: PromptEncoder._embed_points with
    its padding point, the same values, without its boolean-mask indexing, each of which waits
    for the device (four per decoder pass)."""
    points = torch.cat([coords + 0.5, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
    labels = torch.cat([labels.float(), labels.new_full((labels.shape[0], 1), -1.0,
                                                        dtype=torch.float)], dim=1)[..., None]
    emb = encoder.pe_layer.forward_with_coords(points, encoder.input_image_size)
    # Padding points: zeroed, then the not-a-point embedding added.
    emb = torch.where(labels == -1, encoder.not_a_point_embed.weight + 0.0, emb)
    for label in (0, 1):
        emb = torch.where(labels == label, emb + encoder.point_embeddings[label].weight, emb)
    return emb


def broadcast_to_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)``, except that a batch broadcast (stride 0, like the no-mask embedding of
    every prompt) stays one: converting it whole makes one copy per prompt, and the decoder then
    runs its first layer once per prompt instead of once for all (3x slower on an H100)."""
    if x.dim() and x.shape[0] > 1 and x.stride(0) == 0:
        return x[:1].to(dtype).expand(x.shape)
    return x.to(dtype)


def resize_on_device(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """PIL's bilinear resize of an HxWx3 uint8 tensor on its own device, as [1, 3, h, w] float
    grey levels (antialiased like PIL when shrinking; within one grey level of PIL's)."""
    x = image.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, list(size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255)


def build_saom(config: ModelConfig, class_names: Optional[Sequence[str]] = None) -> Saom:
    """A freshly initialised model; class-agnostic models are named ``("object",)``."""
    if class_names is None:
        if config.num_classes > 0:
            raise ValueError(f"a model with {config.num_classes} classes needs class_names")
        class_names = AGNOSTIC_CLASSES
    if config.num_classes > 0 and len(class_names) != config.num_classes:
        raise ValueError(f"config has {config.num_classes} classes but {len(class_names)} "
                         "class names were given")
    return Saom(_build_sam(config), config, class_names)


def _shapes(config: ModelConfig, saom: bool = False) -> dict[str, torch.Size]:
    """Parameter shapes of the Sam (``saom``: of the Saom, class head included) built from
    ``config``, without allocating weights."""
    with torch.device("meta"):
        sam = _build_sam(config)
        module = Saom(sam, config, ()) if saom else sam
    return {k: v.shape for k, v in module.state_dict().items()}


def _mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> list[str]:
    """Keys missing, unexpected or of the wrong shape (first few of each)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k])
    out = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            out.append(f"{what}: {', '.join(keys[:5])}{more}")
    return out


def _detect_type(path: Path, state: Mapping[str, torch.Tensor]) -> str:
    """The preset whose shapes match an official state dict."""
    for name in PRESETS:
        if not _mismatch(state, _shapes(PRESETS[name])):
            return name
    problems = _mismatch(state, _shapes(PRESETS["vit_b"]))
    raise CheckpointError(f"{path}: SAM state dict matches no known architecture "
                          f"({', '.join(PRESETS)}); against vit_b: {'; '.join(problems)}")


def _load_official(path: Path, state: dict[str, torch.Tensor], model_type: Optional[str]) -> Saom:
    """An official Sam.state_dict() file as a class-agnostic model."""
    name = model_type or _detect_type(path, state)
    config = ModelConfig.preset(name)
    problems = _mismatch(state, _shapes(config))
    if problems:
        raise CheckpointError(f"{path}: architecture mismatch with {name}: {'; '.join(problems)}")
    model = build_saom(config)
    model.sam.load_state_dict(state)
    return model


def saom_from_fields(where: str, ckpt: Mapping[str, Any],
                     fields: tuple[str, str, str] = ("config", "class_names", "state_dict")
                     ) -> Saom:
    """The Saom whose config (ModelConfig fields), class names and state dict ``ckpt`` holds
    under ``fields``; CheckpointError naming ``where`` and the field for anything malformed.

    The state dict's shapes are checked against the config's on the meta device before any
    weight is built: a few-KB file could otherwise ask for a model of many GB.
    """
    missing = [f for f in fields if f not in ckpt]
    if missing:
        raise CheckpointError(f"{where}: malformed checkpoint (no {', '.join(missing)})")
    config = checked_config(where, fields[0], ckpt[fields[0]])
    class_names = checked_class_names(where, fields[1], ckpt[fields[1]])
    state = checked_state(where, repr(fields[2]), ckpt[fields[2]])
    check_class_count(where, config, class_names, state)
    problems = _mismatch(state, _shapes(config, saom=True))
    if problems:
        raise CheckpointError(f"{where}: architecture mismatch: {'; '.join(problems)}")
    model = build_saom(config, class_names if config.num_classes > 0 else None)
    model.load_state_dict(state)
    return model


def _load_saom(path: Path, ckpt: dict[str, Any]) -> Saom:
    """A SAOM checkpoint dict (format 1)."""
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported SAOM format version "
                              f"{ckpt.get('format_version')!r} (expected {FORMAT_VERSION})")
    # What is cheap to check first, before the model is built.
    everything = checked_everything(ckpt.get("everything", {}), str(path))
    metadata = ckpt.get("metadata") or {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise CheckpointError(f"{path}: malformed checkpoint: 'metadata' must map names to "
                              f"values, got {metadata!r:.100}")
    model = saom_from_fields(str(path), ckpt)
    model.everything, model.metadata = everything, dict(metadata)
    return model


# torch's weights_only refusal wraps its reason (e.g. the blocked global) in paragraphs of advice,
# one of which suggests weights_only=False: never pass that on.
_TORCH_ADVICE = ("Weights only load failed", "Check the documentation of torch.load")


def load_failure(err: Exception, limit: int = 400) -> str:
    """The part of a torch.load error that says why, on one line, at most ``limit`` chars."""
    paragraphs = [" ".join(p.split()) for p in str(err).split("\n\n")]
    reason = " ".join(p for p in paragraphs if p and not p.startswith(_TORCH_ADVICE))
    reason = reason or " ".join(paragraphs)
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."


def load_model(path: str | os.PathLike, model_type: Optional[str] = None,
               device: str | torch.device = "cpu") -> Saom:
    """Load a SAOM checkpoint or an official sam_vit_*.pth file (then class-agnostic), in eval mode.

    ``model_type`` (a preset name) only applies to official files; None detects it from shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} is a directory, not a checkpoint file" if path.is_dir() else
            f"checkpoint {path} is not a regular file" if path.exists() else
            f"checkpoint file {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for foreign files
        raise CheckpointError(f"{path} is not a checkpoint (torch.load failed: "
                              f"{type(err).__name__}: {load_failure(err)})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint (holds a {type(ckpt).__name__})")
    if ckpt.get("format") == FORMAT:
        model = _load_saom(path, ckpt)
    elif ckpt and all(isinstance(k, str) and k.startswith(_SAM_PREFIXES) for k in ckpt):
        state = checked_state(str(path), "the SAM state dict", ckpt)
        model = _load_official(path, state, model_type)
    else:
        raise CheckpointError(f"{path} is not a checkpoint: neither a SAOM checkpoint "
                              "(format 'saom') nor a SAM state dict")
    return model.to(device).eval()


def save_checkpoint(path: str | os.PathLike, model: Saom,
                    metadata: Optional[Mapping[str, Any]] = None,
                    everything: Optional[Mapping[str, Any]] = None) -> None:
    """Write a SAOM checkpoint atomically (temp file in the same folder, then os.replace).

    ``everything``: the everything-mode settings (EverythingSettings field -> value) the model
    was evaluated with; ``metadata`` and ``everything`` default to the model's own.
    """
    path = Path(path)
    everything = checked_everything(model.everything if everything is None else everything,
                                     f"save_checkpoint({path})")
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": {**dataclasses.asdict(model.config), "encoder_global_attn_indexes":
                   list(model.config.encoder_global_attn_indexes)},
        "class_names": list(model.class_names),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(model.metadata if metadata is None else metadata),
        "everything": everything,
    }
    with atomic_open(path) as f:
        torch.save(ckpt, f)
