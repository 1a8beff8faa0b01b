"""Full-resolution mask work of everything mode: bilinear upsampling, stability scores, boxes
(on the GPU; the CPU makes them from the low-res logits, ``full_size_cpu``), small regions and
label images.

Masks are kept channels last (memory [H, W, N]): PyTorch's bilinear kernel then vectorises
across masks, and the per-mask counts and extents are reductions over contiguous mask vectors.
Masks go through in chunks of at most CHUNK_BYTES of full-size logits: few chunks keep the
kernel launches few (a chunk is ~25 launches, which cost more than the GPU work for small
frames), the bound keeps the memory in check.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from torchvision.ops import nms

# Full-size float32 logits per pass (with the input-size step before them), in bytes.
CHUNK_BYTES = 512 << 20


def _bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size, mode="bilinear", align_corners=False)


def stepped(logits: torch.Tensor, step: int, input_hw: tuple[int, int]) -> torch.Tensor:
    """Logits at the input size [1, N, h, w] (channels-last memory) of low-res logits [N, h', w']:
    Sam.postprocess_masks' first bilinear resize, a step of ``step`` (the same scale as its
    resize to img_size, reading only the rows and columns given), and its crop to ``input_hw``."""
    x = logits.permute(1, 2, 0)[None].permute(0, 3, 1, 2)  # [1, N, h, w] viewing [h, w, N]
    x = x.contiguous(memory_format=torch.channels_last)
    size = (step * logits.shape[-2], step * logits.shape[-1])
    return _bilinear(x, size)[..., :input_hw[0], :input_hw[1]]


def upsample(logits: torch.Tensor, step: int, input_hw: tuple[int, int],
             orig_hw: tuple[int, int]) -> torch.Tensor:
    """Full-resolution logits [H, W, N] of low-res logits [N, h, w], as Sam.postprocess_masks
    makes them from uncropped logits: ``stepped``, then bilinear to ``orig_hw`` (skipped when
    that is the identity)."""
    if logits.shape[0] == 0:  # the bilinear kernel refuses empty input
        return logits.new_empty(orig_hw + (0,))
    x = stepped(logits, step, input_hw)
    if x.shape[-2:] != orig_hw:
        x = _bilinear(x, orig_hw)
    return x[0].permute(1, 2, 0)


def stability_and_boxes(logits: torch.Tensor, step: int, input_hw: tuple[int, int],
                        orig_hw: tuple[int, int], threshold: float, offset: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``stability_scores`` [N] and ``boxes_of`` [N, 4] of the full-size logits (``upsample``)
    of low-res logits [N, h, w], a chunk (``logit_chunks``) at a time."""
    parts = []
    for part in logit_chunks(logits, step, orig_hw):
        full = upsample(logits[part], step, input_hw, orig_hw)
        parts.append((stability_scores(full, threshold, offset, (0, 1)),
                      boxes_of(full, threshold)))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def masks_and_boxes(logits: torch.Tensor, step: int, input_hw: tuple[int, int],
                    orig_hw: tuple[int, int], threshold: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-size masks (bool [N, H, W]) of low-res logits [N, h, w] at ``threshold`` and their
    ``boxes_of``, a chunk (``logit_chunks``) at a time."""
    out = torch.empty((logits.shape[0],) + orig_hw, dtype=torch.bool, device=logits.device)
    boxes = []
    for part in logit_chunks(logits, step, orig_hw):
        full = upsample(logits[part], step, input_hw, orig_hw)
        torch.gt(full.permute(2, 0, 1), threshold, out=out[part])
        boxes.append(boxes_of(full, threshold))
    return out, torch.cat(boxes)


def logit_chunks(logits: torch.Tensor, step: int, orig_hw: tuple[int, int]) -> Iterator[slice]:
    """``chunks`` of low-res logits [N, h, w]: a mask's bytes are its float logits at the
    input step and at full size."""
    step_area = step ** 2 * logits.shape[-2] * logits.shape[-1]
    return chunks(logits.shape[0], 4 * (step_area + orig_hw[0] * orig_hw[1]))


def chunks(n: int, mask_bytes: int) -> Iterator[slice]:
    """Slices covering range(n), each of as many masks of ``mask_bytes`` as CHUNK_BYTES holds
    (at least one); one empty slice when n is 0."""
    size = max(1, CHUNK_BYTES // max(1, mask_bytes))
    return (slice(i, min(i + size, n)) for i in range(0, max(n, 1), size))


def stability_scores(logits: torch.Tensor, threshold: float, offset: float,
                     dims: tuple[int, ...]) -> torch.Tensor:
    """segment_anything's calculate_stability_score (IoU of the masks thresholded at
    ``threshold`` +- ``offset``), reducing ``dims``; 0/0 stays NaN and fails any filter."""
    return _count_above(logits, threshold + offset, dims) / \
        _count_above(logits, threshold - offset, dims)


def _count_above(logits: torch.Tensor, threshold: float, dims: tuple[int, ...]) -> torch.Tensor:
    """Elements above ``threshold`` along ``dims``, as float32. Comparing into a float tensor
    and summing it is ~35% faster on the CPU than summing booleans (which are converted
    first); float32 counts are exact up to 2^24 pixels (the default max_image_pixels)."""
    above = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    return torch.gt(logits, threshold, out=above).sum(dims)


def boxes_of(full: torch.Tensor, threshold: float) -> torch.Tensor:
    """batched_mask_to_box(full > threshold) for channels-last logits [H, W, N]: float [N, 4]
    inclusive x0, y0, x1, y1; all zero for an empty mask."""
    rows = (_row_max(full) > threshold).T  # [N, H]
    cols = (full.amax(0) > threshold).T  # [N, W]

    def extent(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(hit.shape[1], device=hit.device)
        return (torch.where(hit, idx, hit.shape[1]).amin(1),
                torch.where(hit, idx, -1).amax(1))

    (y0, y1), (x0, x1) = extent(rows), extent(cols)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where((y1 < 0)[:, None], 0, boxes).float()


def _row_max(full: torch.Tensor) -> torch.Tensor:
    """``full.amax(1)`` for [H, W, N]. PyTorch's CPU kernel reduces a middle dimension ~20x
    slower unless the inner one is a multiple of 32 floats (8 masks of 256x256: 0.65 ms,
    32 masks: 0.06 ms), so columns are taken g at a time as one inner dimension of g * N."""
    h, w, n = full.shape
    g = 32 // math.gcd(n, 32)
    if g == 1 or w % g or not full.is_contiguous():
        return full.amax(1)
    return full.view(h, w // g, g * n).amax(1).view(h, g, n).amax(1)


def remove_small(masks: torch.Tensor, boxes: torch.Tensor, iou: torch.Tensor, area: int,
                 nms_thresh: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SamAutomaticMaskGenerator.postprocess_small_regions on masks [N, H, W] (bool) with their
    boxes [N, 4] (as ``boxes_of``).

    Each mask is corrected inside its ``_region`` only, which gives the whole-image result with
    a fraction of the pixels. Returns the new masks (on the host, where the connected
    components are found and where the results go; CPU masks that all stay as they were and in
    order are returned without a copy), their boxes (as batched_mask_to_box) and the indices
    (into the inputs) they came from, by descending IoU.
    """
    out = masks.cpu().numpy()
    # Copied before the first change only: the input stays as it was, and the usual frame, in
    # which nothing changes, makes no copy of its masks (15 MB for 50 masks of 640x480).
    copied = masks.device.type != "cpu"
    new_boxes = boxes.cpu().numpy().astype(np.int64)
    unchanged = np.ones(len(out), np.float32)
    for i in range(len(out)):
        mask = out[i]
        x0, y0, x1, y1 = box = new_boxes[i].tolist()
        if box == [0, 0, 0, 0] and not mask[0, 0]:  # empty: nothing to remove, no hole to fill
            continue
        ys, xs = region = _region(box, mask.shape, area)
        crop, holes = remove_small_regions(mask[region], area, holes=True)
        crop, islands = remove_small_regions(crop, area, holes=False)
        if holes or islands:  # filling holes keeps the box; removing regions may shrink it
            if not copied:
                out, copied = out.copy(), True
            out[i][region] = crop
            unchanged[i] = 0.0
            x0, y0, x1, y1 = mask_extent(crop)
            new_boxes[i] = (x0 + xs.start, y0 + ys.start, x1 + xs.start, y1 + ys.start)
    result = torch.from_numpy(new_boxes).float()
    keep = nms(result, torch.from_numpy(unchanged), nms_thresh)
    keep = keep[torch.argsort(iou.cpu()[keep], descending=True, stable=True)]
    # Usually all stay in order (the inputs come sorted); then the masks need no copy.
    kept = torch.from_numpy(out)
    if not torch.equal(keep, torch.arange(len(out))):
        kept = kept[keep]
    return kept, result[keep].to(boxes.device), keep.to(boxes.device)


def remove_small_regions(mask: np.ndarray, area: int, holes: bool) -> tuple[np.ndarray, bool]:
    """segment_anything's remove_small_regions (mode "holes" or "islands"): the mask with its
    8-connected holes, or regions, of fewer than ``area`` pixels removed (every region small:
    the largest stays), and whether anything changed. Region sizes come from a count of the
    pixels when there is one region (the usual case) and from one bincount otherwise:
    cv2.connectedComponentsWithStats took ~5x as long as connectedComponents on mask crops."""
    count, labels = cv2.connectedComponents((mask ^ holes).view(np.uint8), connectivity=8)
    if count == 2:  # one region: all of the pixels on its side
        inside = np.count_nonzero(mask)
        sizes = np.array([mask.size - inside if holes else inside])
    else:
        sizes = np.bincount(labels.ravel(), minlength=count)[1:]  # label 0: the other side
    small = sizes < area
    if not small.any():
        return mask, False
    if holes:  # the mask and its small holes
        keep = np.concatenate([[True], small])
    else:  # the large regions, or else the largest
        keep = np.concatenate([[False], ~small])
        if not keep.any():
            keep[int(np.argmax(sizes)) + 1] = True
    return keep[labels], True


def mask_extent(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Inclusive x0, y0, x1, y1 of ``mask`` (bool [H, W]); None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _region(box: tuple[int, int, int, int], hw: tuple[int, int], area: int
            ) -> tuple[slice, slice]:
    """Rows and columns of an image of size ``hw`` in which a mask's small regions and holes are
    those of the whole mask: its ``box`` grown by ``area`` pixels per side.

    Every pixel outside the box is background, and each strip of the image beside the box is
    connected, so a hole reaching out of the box holds a whole strip, at least min(H, W)
    pixels, and is never small. Inside the grown box, a hole reaching its margin holds that
    margin's strip, at least ``area`` pixels wide or high up to the image's edge, and so is
    not small there either; every other hole and every region lies inside the box.
    """
    h, w = hw
    if area > min(h, w):  # a strip beside the box may itself be a small hole
        return slice(0, h), slice(0, w)
    grow = int(np.ceil(area))
    x0, y0, x1, y1 = box
    return (slice(max(0, y0 - grow), min(h, y1 + 1 + grow)),
            slice(max(0, x0 - grow), min(w, x1 + 1 + grow)))


def label_images(masks: torch.Tensor, class_ids: np.ndarray, boxes: Optional[np.ndarray] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Instance and semantic images (uint16 [H, W]) of masks [N, H, W] sorted best first, with
    their class ids [N] and, when known, their boxes [N, 4] (inclusive x0, y0, x1, y1, as
    ``boxes_of``): a pixel goes to the first mask covering it (instance i + 1, its class id); 0
    where none does."""
    # On a GPU one argmax instead of a kernel per mask. Host masks are painted by numpy inside
    # their boxes: PyTorch's CPU kernels on 256x256 images took ~1 ms each on a 16-core GPU
    # machine (waking its thread pool after the host waited on the device).
    if masks.device.type == "cpu" or masks.shape[0] == 0:
        inst = _painted(masks.cpu().numpy(), boxes)
    else:
        inst = _first_cover(masks).to(torch.int16).cpu().numpy().view(np.uint16)
    # uint16 holds every id (at most a few thousand masks).
    lut = np.concatenate([[0], np.asarray(class_ids)]).astype(np.uint16)
    return inst, lut[inst]


def _painted(masks: np.ndarray, boxes: Optional[np.ndarray] = None) -> np.ndarray:
    """uint16 [H, W]: 1 + the index of the first of masks [N, H, W] covering each pixel, else 0;
    painted worst first, so that the best mask covering a pixel is written last; only inside
    each mask's box when ``boxes`` are given."""
    inst = np.zeros(masks.shape[-2:], np.uint16)
    for i in range(masks.shape[0] - 1, -1, -1):
        rows, cols = slice(None), slice(None)
        if boxes is not None:
            x0, y0, x1, y1 = (int(v) for v in boxes[i])
            rows, cols = slice(y0, y1 + 1), slice(x0, x1 + 1)
        region = inst[rows, cols]
        region[masks[i, rows, cols]] = i + 1
    return inst


def _first_cover(masks: torch.Tensor) -> torch.Tensor:
    """``_painted`` by one argmax (the first maximum) over N >= 1 masks, int32 on their device."""
    first = masks.view(torch.uint8).argmax(0).to(torch.int32)
    return torch.where(masks.any(0), first + 1, 0)
