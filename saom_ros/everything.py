"""Everything mode: SamAutomaticMaskGenerator's semantics (no crops), fast, with class labels.

The whole point grid goes through the decoder in ``points_per_batch`` chunks; filtering, box NMS
and label images stay on the device; only masks that survive NMS are upsampled to the original
resolution, and no RLE is made.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Optional

import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box, build_point_grid
from torchvision.ops import nms

from saom_ros import full_size
from saom_ros.full_size import stability_scores

from saom_ros.image_decode import MAX_IMAGE_PIXELS
from saom_ros.model import Saom

# Masks whose low-res stability score is below the threshold by more than this are dropped
# without computing it at full size. Full-size scores exceeded low-res ones by at most 0.15
# (small masks, threshold 0.5; 0.015 above 0.9) in our measurements.
STABILITY_MARGIN = 0.2
# The decoder's two stride-2 transposed convolutions: low-res mask pixels per embedding pixel.
LOW_RES_PER_EMBEDDING = 4


def make_point_grid(points_per_side: int) -> np.ndarray:
    """The everything-mode grid in [0,1]^2 (segment_anything's build_point_grid), (n*n, 2) x,y."""
    return build_point_grid(points_per_side)


@dataclasses.dataclass
class EverythingSettings:
    """Everything-mode settings; defaults are SamAutomaticMaskGenerator's."""

    points_per_side: int = 32
    points_per_batch: int = 256
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    max_instances: int = 0  # 0 = all
    mask_threshold: float = 0.0
    max_image_pixels: int = MAX_IMAGE_PIXELS  # images are also refused before decoding
    cuda_dtype: str = "bfloat16"  # compute dtype on CUDA: bfloat16, float16 or float32
    compile: bool = False  # torch.compile the image encoder and the decoder


# Fields that change only speed and memory, never which masks come out: checkpoints do not carry
# them, so every machine keeps its own.
RUNTIME_FIELDS = frozenset({"points_per_batch", "max_image_pixels", "cuda_dtype", "compile"})


def _typed(name: str, value: Any, default: Any, source: str) -> Any:
    """``value`` as the type of the field's default (an int is a valid float); else ValueError."""
    kind = type(default)
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise ValueError(f"{source}: {name} must be of type {kind.__name__}, got {value!r}")
    return value


def settings_for(model: Saom, **explicit: Any) -> EverythingSettings:
    """Generator defaults, then the settings the model's checkpoint carries (``model.everything``),
    then the ``explicit`` ones (a None value counts as not given).

    Unknown field names and values of the wrong type raise ValueError naming their source.
    """
    defaults = dataclasses.asdict(EverythingSettings())
    values: dict[str, Any] = {}
    for source, given in (("the checkpoint's everything-mode settings", model.everything),
                          ("everything-mode settings",
                           {k: v for k, v in explicit.items() if v is not None})):
        for name, value in given.items():
            if name not in defaults:
                raise ValueError(f"{source}: unknown setting {name!r}; known: "
                                 f"{', '.join(defaults)}")
            values[name] = _typed(name, value, defaults[name], source)
    return EverythingSettings(**{**defaults, **values})


def carried_settings(settings: EverythingSettings) -> dict[str, Any]:
    """What a checkpoint carries of ``settings``: every field but the RUNTIME_FIELDS."""
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in RUNTIME_FIELDS}


@dataclasses.dataclass
class Instances:
    """Everything-mode result at the original resolution, sorted by descending predicted IoU."""

    masks: np.ndarray  # bool [N, H, W]
    boxes: np.ndarray  # float32 [N, 4] x0, y0, x1, y1 (inclusive pixel extents)
    predicted_iou: np.ndarray  # float32 [N]
    stability_score: np.ndarray  # float32 [N]
    class_ids: np.ndarray  # int32 [N], 1..C
    class_scores: np.ndarray  # float32 [N]
    instance_image: np.ndarray  # uint16 [H, W], 0 = none, i + 1 = masks[i]
    semantic_image: np.ndarray  # uint16 [H, W], 0 = unlabelled

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def validate_image(image: object, max_pixels: int) -> np.ndarray:
    """The image if it is an RGB uint8 HxWx3 array within ``max_pixels``; ValueError otherwise."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an RGB image as a numpy uint8 array HxWx3, got {type(image)}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected an image of dtype uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ValueError(f"expected at most {max_pixels} pixels (max_image_pixels), got "
                         f"{image.shape[0]}x{image.shape[1]}")
    return image


class _Candidates:
    """Masks that passed the filters: low-res logits and per-mask values, on the device."""

    KEYS = ("logits", "iou", "cls", "stability", "boxes")

    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.KEYS}

    def add(self, **values: torch.Tensor) -> None:
        for k in self.KEYS:
            self.parts[k].append(values[k])

    def cat(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v) for k, v in self.parts.items()}


class EverythingEngine:
    """Turns one RGB image into whole-object, class-labelled instances."""

    def __init__(self, model: Saom, settings: Optional[EverythingSettings] = None,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.settings = settings or EverythingSettings()
        self.model = self._on_device(model)
        self._compiled_fns: dict[str, Callable] = {}

    def _on_device(self, model: Saom) -> Saom:
        """The model on the device; on CUDA a copy in ``cuda_dtype`` (prompt encoder in float32,
        its Fourier features need the precision)."""
        dtype = getattr(torch, self.settings.cuda_dtype)
        if self.device.type != "cuda" or dtype == torch.float32:
            return model.to(self.device).eval()
        fast = copy.deepcopy(model).to(self.device, dtype).eval()
        fast.sam.prompt_encoder.float()
        for name in ("pixel_mean", "pixel_std"):  # normalise in float32
            fast.sam.register_buffer(name, getattr(model.sam, name).to(self.device), False)
        return fast

    @property
    def _dtype(self) -> torch.dtype:
        return self.model.sam.mask_decoder.iou_token.weight.dtype

    def _compiled(self, name: str) -> Callable:
        """The model's method ``name``, through torch.compile when ``compile`` is set."""
        fn = getattr(self.model, name)
        if not self.settings.compile:
            return fn
        if name not in self._compiled_fns:
            self._compiled_fns[name] = torch.compile(fn)
        return self._compiled_fns[name]

    def _points(self, orig_hw: tuple[int, int], input_hw: tuple[int, int]) -> torch.Tensor:
        """Grid points in model input pixels, as SamAutomaticMaskGenerator computes them."""
        grid = make_point_grid(self.settings.points_per_side)
        scale = np.array([input_hw[1] / orig_hw[1], input_hw[0] / orig_hw[0]])
        pts = grid * np.array(orig_hw[::-1]) * scale
        return torch.as_tensor(pts, dtype=torch.float32, device=self.device)

    def _low_res_valid(self, input_hw: tuple[int, int], low_res: int) -> tuple[int, int]:
        """Rows and columns of the low-res logits that cover the image (not the padding)."""
        f = low_res / self.model.config.img_size
        return int(np.ceil(input_hw[0] * f)), int(np.ceil(input_hw[1] * f))

    def _decode_all(self, emb: torch.Tensor, points: torch.Tensor, valid: tuple[int, int],
                    input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Decode the grid in batches; keep masks passing the IoU and stability filters."""
        s = self.settings
        cand = _Candidates()
        # Masks only where the image is, plus the low-res row and column beyond it that the
        # bilinear upsampling reads; the padding's masks are never used.
        extent = (min(emb.shape[-2], -(-(valid[0] + 1) // LOW_RES_PER_EMBEDDING)),
                  min(emb.shape[-1], -(-(valid[1] + 1) // LOW_RES_PER_EMBEDDING)))
        labels = torch.ones(points.shape[0], 1, dtype=torch.int, device=self.device)
        for chunk, lab in zip(points.split(s.points_per_batch), labels.split(s.points_per_batch)):
            state = self._compiled("decode_tokens")(emb, chunk[:, None, :], lab)
            iou = state.iou_pred[:, 1:].float()
            n_masks = iou.shape[1]
            cls = self._class_probs(self.model.class_logits(state), iou)
            # The IoU token decides before any mask exists: prompts whose masks all fail the
            # IoU filter are never upscaled.
            passed = iou > s.pred_iou_thresh if s.pred_iou_thresh > 0 else torch.ones_like(
                iou, dtype=torch.bool)
            prompts = passed.any(1).nonzero()[:, 0]
            state = state._replace(tokens=state.tokens[prompts], image=state.image[prompts])
            logits = self._compiled("decode_masks")(state, True, extent).flatten(0, 1).float()
            keep = passed[prompts].flatten()
            iou, cls = iou[prompts].flatten(), cls[prompts].repeat_interleave(n_masks, 0)
            if s.stability_score_thresh > 0:
                # Cheap pre-screen on the low-res logits; survivors are decided at full size.
                stab = stability_scores(logits[:, :valid[0], :valid[1]], s.mask_threshold,
                                        s.stability_score_offset, (-2, -1))
                keep &= stab >= s.stability_score_thresh - STABILITY_MARGIN
            logits, iou, cls = logits[keep], iou[keep], cls[keep]
            for part in full_size.chunks(logits.shape[0]):
                self._full_size_filter(cand, logits[part], iou[part], cls[part], input_hw,
                                       orig_hw)
        return cand.cat()

    def _full_size_filter(self, cand: _Candidates, logits: torch.Tensor, iou: torch.Tensor,
                          cls: torch.Tensor, input_hw: tuple[int, int],
                          orig_hw: tuple[int, int]) -> None:
        """Stability filter and boxes on full-resolution masks, as SamAutomaticMaskGenerator."""
        s = self.settings
        full = self._upsample(logits, input_hw, orig_hw)
        stab = stability_scores(full, s.mask_threshold, s.stability_score_offset, (0, 1))
        # The generator drops boxes near crop edges; with one crop (the image) there are none.
        keep = stab >= s.stability_score_thresh if s.stability_score_thresh > 0 else \
            torch.ones_like(iou, dtype=torch.bool)
        cand.add(logits=logits[keep], iou=iou[keep], cls=cls[keep], stability=stab[keep],
                 boxes=full_size.boxes_of(full, s.mask_threshold)[keep])

    @staticmethod
    def _class_probs(class_logits: Optional[torch.Tensor], iou: torch.Tensor) -> torch.Tensor:
        """Per-prompt class probabilities [B, C]; for a class-agnostic model a placeholder
        column (the packing scores such instances by IoU)."""
        if class_logits is None:
            return torch.ones_like(iou[:, :1])
        return class_logits.float().softmax(-1)

    def _upsample(self, logits: torch.Tensor, input_hw: tuple[int, int],
                  orig_hw: tuple[int, int]) -> torch.Tensor:
        """Full-resolution logits [H, W, N] (channels last) of low-res logits [N, h, w]."""
        step = self.model.config.patch_size // LOW_RES_PER_EMBEDDING  # input px per low-res px
        return full_size.upsample(logits, step, input_hw, orig_hw)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> Instances:
        s = self.settings
        validate_image(image, s.max_image_pixels)
        orig_hw = (int(image.shape[0]), int(image.shape[1]))
        x, input_hw = self.model.preprocess(image)
        emb = self._compiled("embed")(x.to(self._dtype))
        low_res = 4 * emb.shape[-1]
        valid = self._low_res_valid(input_hw, low_res)
        c = self._decode_all(emb, self._points(orig_hw, input_hw), valid, input_hw, orig_hw)
        keep = nms(c["boxes"], c["iou"], s.box_nms_thresh)
        iou, cls, stability = c["iou"][keep], c["cls"][keep], c["stability"][keep]
        masks = (self._upsample(c["logits"][keep], input_hw, orig_hw) > s.mask_threshold
                 ).permute(2, 0, 1).contiguous()
        if s.min_mask_region_area > 0:
            masks, order = full_size.remove_small(masks, iou, s.min_mask_region_area,
                                                  s.box_nms_thresh)
            iou, cls, stability = iou[order], cls[order], stability[order]
        if s.max_instances > 0:
            masks, iou, cls, stability = (t[:s.max_instances] for t in (masks, iou, cls, stability))
        return self._instances(masks, iou, stability, cls)

    def _instances(self, masks: torch.Tensor, iou: torch.Tensor, stability: torch.Tensor,
                   cls: torch.Tensor) -> Instances:
        """Pack results; a label-image pixel goes to the first (best) mask covering it."""
        agnostic = self.model.class_head is None
        class_scores, class_idx = (iou, torch.zeros_like(iou, dtype=torch.long)) if agnostic \
            else cls.max(dim=1)
        class_ids = class_idx + 1
        instance_image, semantic_image = full_size.label_images(masks, class_ids)
        return Instances(
            masks=masks.cpu().numpy(),
            boxes=batched_mask_to_box(masks).float().cpu().numpy().reshape(-1, 4),
            predicted_iou=iou.float().cpu().numpy(),
            stability_score=stability.float().cpu().numpy(),
            class_ids=class_ids.to(torch.int32).cpu().numpy(),
            class_scores=class_scores.float().cpu().numpy(),
            instance_image=instance_image,
            semantic_image=semantic_image,
        )
