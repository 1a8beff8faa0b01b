"""Everything mode: SamAutomaticMaskGenerator's semantics (no crops), fast, with class labels.

The whole point grid goes through the decoder in ``points_per_batch`` chunks; filtering, box NMS
and label images stay on the device; only masks that survive NMS are upsampled to the original
resolution, and no RLE is made.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Callable, Optional

import numpy as np
import torch
from segment_anything.utils.amg import build_point_grid
from torchvision.ops import nms

from saom_ros import full_size, full_size_cpu, prompts, second_pass
from saom_ros.candidates import Candidates, Frame, decode_candidates, prompt_batch
from saom_ros.cuda_encoder import CudaEncoder
from saom_ros.cuda_tokens import CudaTokenStage
from saom_ros.encoder_attention import fuse_attention
from saom_ros.encoder_convolutions import gemm_convolutions
from saom_ros.everything_settings import EverythingSettings
from saom_ros.model import Saom
from saom_ros.tracking import MATCH_STRIDE, footprint_iou


# SamAutomaticMaskGenerator removes the duplicates that small-region removal leaves at the larger
# of box_nms_thresh and its crop_nms_thresh (0.7 by default), even with one crop.
SMALL_REGION_NMS_FLOOR = 0.7
# streaming: a previous instance is lost when no new instance's footprint (its pixels in the
# instance image) overlaps its own by this IoU. Whether a new instance merely covers its point
# is not enough: after a cut to another scene one large mask can cover every old point.
LOST_IOU = 0.2


def make_point_grid(points_per_side: int) -> np.ndarray:
    """The everything-mode grid in [0,1]^2 (segment_anything's build_point_grid), (n*n, 2) x,y."""
    return build_point_grid(points_per_side)


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
    # int32 [N]: for a mask prompted by an instance of the previous frame (streaming), that
    # instance's index in the previous Instances; else -1. None given: all -1.
    prompt_source: Optional[np.ndarray] = None
    # float32 [N, 2]: the point (x, y pixels) whose prompt gave each mask. None given: NaN.
    prompt_point: Optional[np.ndarray] = None
    # bool [N]: the mask's point is the very point that had given its prompt_source instance,
    # i.e. an instance's own point found it again (streaming). None given: all False.
    prompt_repeated: Optional[np.ndarray] = None
    # Prompts the decoder ran for this result (a streaming frame redone as a keyframe counts
    # both tries): what the prompt strategy spent.
    points_decoded: int = 0

    def __post_init__(self) -> None:
        if self.prompt_source is None:
            self.prompt_source = np.full(len(self), -1, np.int32)
        if self.prompt_point is None:
            self.prompt_point = np.full((len(self), 2), np.nan, np.float32)
        if self.prompt_repeated is None:
            self.prompt_repeated = np.zeros(len(self), bool)

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


class EverythingEngine:
    """Turns one RGB image into whole-object, class-labelled instances.

    ``prompt_strategy`` picks the points: ``grid`` (the generator's full grid, exact),
    ``hierarchical`` (a coarse grid, then the full-grid points inside a coarse mask that found
    something new and in no confident one) or ``streaming`` (points inside each of the previous
    frame's instances, among them the point that gave it (alone where that point had found the
    instance again), plus one interleaved sub-grid of the full grid over what they leave
    uncovered, then the full-grid points inside new masks as in ``hierarchical``, where a
    previous instance that a search gave counts as confident; the full grid on keyframes).
    """

    def __init__(self, model: Saom, settings: Optional[EverythingSettings] = None,
                 device: torch.device | str = "cpu", token_graphs: bool = True) -> None:
        """``token_graphs``: on CUDA, replay the decoder's token stage from CUDA graphs
        (``CudaTokenStage``); False launches it op by op (what benchmarks compare against)."""
        self.device = torch.device(device)
        # Assigning settings (the node does it from its parameter callback) applies from the
        # next frame: each frame reads the snapshot taken when it started.
        self.settings = settings or EverythingSettings()
        self._frame_settings = self.settings
        self.model = self._on_device(model)
        self._compiled_fns: dict[str, Callable] = {}
        self._cuda_encoders: dict[bool, CudaEncoder] = {}  # by the compile setting
        self._token_stage = CudaTokenStage(self.model) \
            if self.device.type == "cuda" and token_graphs else None
        if self.device.type == "cpu":  # at start-up, not on the first frame
            full_size_cpu.compile_kernel()
        self._since_keyframe = 0  # streaming frames since the last full grid
        self._decoded = 0  # prompts decoded for the current image

    def _on_device(self, model: Saom) -> Saom:
        """The model on the device, as a copy whose image encoder uses fused attention
        (``fuse_attention``; on the CPU its ``mask`` form: the vit_b encoder took 7.6 s instead
        of 13.3-14.0 s on 2 cores, SAOM-small's 1.80 instead of 2.0 ms) and, on the CPU, GEMMs
        for its convolutions (``gemm_convolutions``: SAOM-small's 3.3 instead of 4.2 ms). On
        CUDA the copy is in ``cuda_dtype`` (prompt encoder in float32, its Fourier features
        need the precision); elsewhere it shares the model's parameters, so that the caller's
        model is left as it was without a second copy of the weights."""
        if self.device.type != "cuda":
            fast = _sharing_copy(model.to(self.device)).eval()
            fuse_attention(fast.sam.image_encoder)
            if self.device.type == "cpu":
                gemm_convolutions(fast.sam.image_encoder)
            return fast
        fast = copy.deepcopy(model).to(self.device, getattr(torch, self.settings.cuda_dtype))
        fuse_attention(fast.sam.image_encoder)
        fast.sam.prompt_encoder.float()
        for name in ("pixel_mean", "pixel_std"):  # normalise in float32
            fast.sam.register_buffer(name, getattr(model.sam, name).to(self.device), False)
        return fast.eval()

    def _method(self, name: str) -> Callable:
        """The model's method ``name`` as the engine runs it: on CUDA ``decode_tokens`` replayed
        from CUDA graphs (``CudaTokenStage``); through torch.compile when ``compile`` is set (on
        CUDA only ``embed``)."""
        if self._token_stage is not None and name == "decode_tokens":
            return self._token_stage
        fn = getattr(self.model, name)
        # On CUDA only the encoder: the decoder's fused kernels beat its compiled PyTorch form
        # (vit_b, 640x480 on an H100: 30.8 ms per frame with them, 50.1 ms compiled).
        if not self._frame_settings.compile or (self.device.type == "cuda" and name != "embed"):
            return fn
        if name not in self._compiled_fns:
            self._compiled_fns[name] = torch.compile(fn)
        return self._compiled_fns[name]

    def _frame(self, image: np.ndarray) -> Frame:
        validate_image(image, self._frame_settings.max_image_pixels)
        x, input_hw = self.model.preprocess(image)
        dtype = self.model.sam.mask_decoder.iou_token.weight.dtype
        emb = self._embed(x.to(dtype))
        cfg = self.model.config
        return Frame(emb, (int(image.shape[0]), int(image.shape[1])), input_hw, cfg.img_size,
                     cfg.patch_size)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings; on CUDA replayed from a CUDA graph of the (compiled) encoder."""
        run = self._method("embed")
        if self.device.type != "cuda":
            return run(x)
        key = self._frame_settings.compile
        if key not in self._cuda_encoders:
            self._cuda_encoders[key] = CudaEncoder(self.model.sam.image_encoder, run)
        return self._cuda_encoders[key](x)

    def _candidates(self, frame: Frame, points: np.ndarray,
                    settings: Optional[EverythingSettings] = None) -> Candidates:
        """Candidates of ``points`` under ``settings`` (default: the engine's), counted."""
        self._decoded += len(points)
        return decode_candidates(self.model, frame, points, settings or self._frame_settings,
                                 self._method)

    def _grid(self, frame: Frame, points_per_side: int) -> Candidates:
        return self._candidates(frame, prompts.grid_points(points_per_side, frame.orig_hw))

    def warm_up(self) -> None:
        """Segment one blank frame, so that one-time work (on CUDA the choice of the encoder's
        attention form, its CUDA graph, the decoder kernels' autotuning and compilation, the
        token stage's CUDA graphs for every prompt count up to a batch; with ``compile``
        torch.compile) happens now instead of on the first camera frame."""
        size = self.model.config.img_size
        blank = np.zeros((size * 3 // 4, size, 3), np.uint8)
        self(blank)
        if self._token_stage is not None:
            with torch.inference_mode():
                self._token_stage.prepare(self._frame(blank).embedding,
                                          prompt_batch(self.settings, self.device))

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, previous: Optional[Instances] = None) -> Instances:
        """Instances of ``image``; ``previous`` (the last result on this camera) is used by the
        streaming strategy only."""
        self._frame_settings = self.settings
        frame = self._frame(image)
        self._decoded = 0
        result = self._by_strategy(frame, previous)
        result.points_decoded = self._decoded
        return result

    def _by_strategy(self, frame: Frame, previous: Optional[Instances]) -> Instances:
        strategy = self._frame_settings.prompt_strategy
        if strategy == "hierarchical":
            return self._finish(frame, self._hierarchical(frame))
        if strategy == "streaming":
            streamed = self._streaming(frame, previous)
            if streamed is not None:
                return streamed
        return self._finish(frame, self._grid(frame, self._frame_settings.points_per_side))

    def _hierarchical(self, frame: Frame) -> Candidates:
        """Coarse-grid candidates, then those of the full-grid points that
        ``second_pass.spread_over_new_masks`` picks (the deepest few inside each new coarse mask,
        in no confident one). Confident: kept by box NMS with predicted IoU >=
        confident_iou_thresh."""
        s = self._frame_settings
        # Never finer than the full grid: a coarse grid above it decodes more than the grid.
        side = min(s.coarse_points_per_side or max(1, s.points_per_side // 2), s.points_per_side)
        return self._two_pass(frame, prompts.grid_points(side, frame.orig_hw),
                              s.confident_iou_thresh, s.points_per_new_mask)[0]

    def _two_pass(self, frame: Frame, first: np.ndarray, confident_iou: float, per_mask: int,
                  settled: Optional[np.ndarray] = None) -> tuple[Candidates, int]:
        """Candidates of the points ``first``, then of the full-grid points inside their new
        masks that ``second_pass.spread_over_new_masks`` picks (confident: kept by NMS with
        predicted IoU >= ``confident_iou``, or given by a point of ``first`` that ``settled``
        marks (bool, one per leading point)): ``per_mask`` of them per new mask (0: all); and
        how many points were decoded in all. The second pass's prompt indices follow the
        first's."""
        s = self._frame_settings
        near = self._candidates(frame, first, second_pass.near_pass(s))
        found = near.select(second_pass.passes(near, s))
        kept = found.select(nms(found.boxes, found.iou, s.box_nms_thresh))
        confident = kept.iou >= confident_iou
        if settled is not None and settled.any():
            by_point = np.zeros(len(first), bool)
            by_point[:len(settled)] = settled
            confident |= torch.from_numpy(by_point).to(kept.prompt.device)[kept.prompt]
        confident = kept.select(confident)
        new = second_pass.new_masks(frame, near, confident, s.mask_threshold, s.box_nms_thresh)
        points = prompts.grid_points(s.points_per_side, frame.orig_hw)
        points = points[~second_pass.among(points, first)]
        points = points[second_pass.spread_over_new_masks(
            frame, new, confident.logits, points, s.mask_threshold, per_mask)]
        if len(points) == 0:  # nothing new: no second decoder pass (on a GPU a few ms)
            return found, len(first)
        more = self._candidates(frame, points)
        more = dataclasses.replace(more, prompt=more.prompt + len(first))
        return Candidates.cat([found, more]), len(first) + len(points)

    def _streaming(self, frame: Frame, previous: Optional[Instances]) -> Optional[Instances]:
        """Instances from points inside the previous ones and a sub-grid over the uncovered
        area, then the full-grid points their masks leave unexplained (as ``_hierarchical``);
        None when this frame must be a keyframe (none before, a new image size, the keyframe
        interval is over, more previous instances than full-grid points) or be redone as one (more than max_lost_fraction of the previous
        instances are lost, ``_lost``). A redone frame does not restart the keyframe interval:
        restarting it left the sequences that lose instances longest without a keyframe."""
        s = self._frame_settings
        # Following more instances than the full grid has points would cost more than the grid
        # (and with loose filters each frame's instances seed more: thousands within frames).
        if previous is None or previous.instance_image.shape != frame.orig_hw or \
                self._since_keyframe + 1 >= s.keyframe_interval or \
                len(previous) > s.points_per_side ** 2:
            self._since_keyframe = 0
            return None
        phase = self._since_keyframe
        self._since_keyframe += 1
        # The points that gave the previous instances, where still inside them, and points
        # well inside them. An instance whose own point had found it again (prompt_repeated)
        # gets its point alone: a second point there mostly gives the same mask again.
        tracked = previous.instance_image > 0
        held = prompts.covered(np.nan_to_num(previous.prompt_point, nan=-1.0), tracked) \
            & ~np.isnan(previous.prompt_point[:, 0])
        again = np.flatnonzero(held)
        inside, owner = prompts.inside_points(previous.masks, s.points_per_instance,
                                              previous.boxes,
                                              np.flatnonzero(~(held & previous.prompt_repeated)))
        inside = np.concatenate([inside, previous.prompt_point[again]])
        owner = np.concatenate([owner, again])
        sparse = prompts.grid_points(s.points_per_side, frame.orig_hw)
        sparse = sparse[prompts.grid_phase(s.points_per_side, s.stream_stride, phase)]
        sparse = sparse[~prompts.covered(sparse, tracked)]
        points = np.concatenate([inside, sparse]).reshape(-1, 2)
        # A previous instance that a search gave (the keyframe's grid, the sub-grid or the
        # second pass: no source) had the full grid's best masks inside it one frame ago; its
        # tracked masks count as confident, so the grid inside a tracked instance of low
        # predicted IoU is searched every other frame instead of every frame.
        settled = previous.prompt_source[owner] < 0
        cand, decoded = self._two_pass(frame, points, s.stream_confident_iou_thresh,
                                       s.stream_points_per_new_mask, settled)
        source = np.concatenate([owner, np.full(decoded - len(owner), -1)]).astype(np.int32)
        result = self._finish(frame, cand, source)
        result.prompt_repeated = _repeated(previous, result)
        lost, visible = _lost(previous, result)
        return None if lost > s.max_lost_fraction * visible else result

    def _finish(self, frame: Frame, cand: Candidates,
                source: Optional[np.ndarray] = None) -> Instances:
        """Box NMS, full-size masks, small-region removal, max_instances; ``source`` maps each
        decoded point to a previous instance (or -1) for ``Instances.prompt_source``."""
        s = self._frame_settings
        cand = cand.select(nms(cand.boxes, cand.iou, s.box_nms_thresh))
        masks, boxes = frame.masks(cand.logits, s.mask_threshold)
        if s.min_mask_region_area > 0:
            masks, boxes, order = full_size.remove_small(
                masks, boxes, cand.iou, s.min_mask_region_area,
                max(s.box_nms_thresh, SMALL_REGION_NMS_FLOOR))
            cand = cand.select(order)
        cand = dataclasses.replace(cand, boxes=boxes)
        if s.max_instances > 0:
            masks, cand = masks[:s.max_instances], cand.select(slice(0, s.max_instances))
        return self._instances(masks, cand, source)

    def _instances(self, masks: torch.Tensor, cand: Candidates,
                   source: Optional[np.ndarray]) -> Instances:
        """Pack results; a label-image pixel goes to the first (best) mask covering it."""
        iou = cand.iou.float()
        if self.model.class_head is None:  # class-agnostic: scored by predicted IoU
            class_scores, class_idx = iou, torch.zeros_like(iou, dtype=torch.long)
        else:
            class_scores, class_idx = cand.cls.float().max(dim=1)
        class_ids = class_idx + 1
        # The per-mask numbers in one copy to the host (each copy waits for the device);
        # float32 holds the ids and indices exactly (below 2^24).
        columns = (cand.boxes.float().reshape(-1, 4), iou[:, None],
                   cand.stability.float()[:, None], class_ids.float()[:, None],
                   class_scores[:, None], cand.point.float(), cand.prompt.float()[:, None])
        table = torch.cat(columns, 1).cpu().numpy()
        widths = np.cumsum([c.shape[1] for c in columns])[:-1]
        boxes, iou_, stability, ids, scores, point, prompt = (
            np.ascontiguousarray(c) for c in np.split(table, widths, axis=1))
        prompt = prompt[:, 0].astype(np.int64)
        ids = ids[:, 0].astype(np.int32)
        instance_image, semantic_image = full_size.label_images(masks, ids, boxes)
        return Instances(
            masks=masks.cpu().numpy(),
            boxes=boxes,
            predicted_iou=iou_[:, 0],
            stability_score=stability[:, 0],
            class_ids=ids,
            class_scores=scores[:, 0],
            instance_image=instance_image,
            semantic_image=semantic_image,
            prompt_source=(np.full(len(prompt), -1, np.int32) if source is None
                           else source[prompt].astype(np.int32)),
            prompt_point=point,
        )


def _repeated(previous: Instances, result: Instances) -> np.ndarray:
    """bool [N]: the instances of ``result`` whose point is the one that gave their
    prompt_source instance of ``previous``."""
    source = result.prompt_source
    if len(previous) == 0:
        return np.zeros(len(result), bool)
    return (source >= 0) & np.all(
        result.prompt_point == previous.prompt_point[np.maximum(source, 0)], axis=1)


def _lost(previous: Instances, result: Instances) -> tuple[int, int]:
    """(lost, visible): of the previous instances that own pixels of their instance image, how
    many no instance of ``result`` overlaps by LOST_IOU; footprints compared on every
    MATCH_STRIDE-th row and column, as the tracker compares them."""
    old = previous.instance_image[::MATCH_STRIDE, ::MATCH_STRIDE]
    new = result.instance_image[::MATCH_STRIDE, ::MATCH_STRIDE]
    iou = footprint_iou(old.astype(np.intp) * (len(result) + 1) + new, len(previous), len(result))
    visible = np.bincount(old.ravel(), minlength=len(previous) + 1)[1:] > 0
    found = (iou >= LOST_IOU).any(axis=1)
    return int(np.count_nonzero(visible & ~found)), int(np.count_nonzero(visible))


def _sharing_copy(model: Saom) -> Saom:
    """A copy of ``model``'s modules that shares its parameters and buffers."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)
