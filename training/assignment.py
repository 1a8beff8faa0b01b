"""Training prompts on the everything-mode grid: the nearest-neighbour assignment (one grid point
per ground-truth mask, the paper's), multi-point (interior grid points added) and random pixels.

Frames (one convention, so any image size works):
- *image frame*: pixels of the original image, (x, y), the frame of the masks and of the
  everything-mode grid (segment_anything scales its [0, 1] grid by the image's w, h);
- *model frame*: pixels of the padded square model input (longest side resized to ``img_size``,
  padded right/bottom); the image embedding grid tiles this square.
Features are compared in the model frame; the chosen location is mapped back to the image frame
and snapped there to the grid that everything mode prompts at inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

# the everything-mode prompt grid in the image frame, float32[P, 2] (x, y): the one the engine uses
from saom_ros.prompts import grid_points


@dataclass
class Assignment:
    """Prompts for the masks that survived assignment (``keep`` indexes the input masks; a mask
    with several prompts appears once per prompt)."""

    keep: np.ndarray  # int64[K]
    points: np.ndarray  # float32[K, 2], (x, y) in the image frame
    grid_index: np.ndarray  # int64[K], index into grid_points(); -1 for random prompts


def resized_hw(image_hw: tuple[int, int], img_size: int) -> tuple[int, int]:
    """Size of the image inside the model input (segment_anything's ResizeLongestSide)."""
    return ResizeLongestSide.get_preprocess_shape(image_hw[0], image_hw[1], img_size)


def grid_pixels(grid: np.ndarray, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Column and row of the pixel each grid point falls in (clipped to the image)."""
    ix = np.clip(np.floor(grid).astype(np.int64), 0, [image_hw[1] - 1, image_hw[0] - 1])
    return ix[:, 0], ix[:, 1]


def to_model_frame(points: np.ndarray, image_hw: tuple[int, int], img_size: int) -> np.ndarray:
    """Image-frame (x, y) points -> model-frame points, exactly as the predictor maps prompts."""
    return ResizeLongestSide(img_size).apply_coords(np.asarray(points, np.float64), image_hw)


def _overlaps(edges: torch.Tensor, size: int) -> torch.Tensor:
    """[size, len(edges) - 1]: the length of pixel i's extent [i, i + 1] inside [e_j, e_j+1]."""
    px = torch.arange(size, dtype=edges.dtype, device=edges.device)[:, None]
    return (torch.minimum(px + 1, edges[1:]) - torch.maximum(px, edges[:-1])).clamp_(min=0)


def mask_coverage(masks: torch.Tensor, image_hw: tuple[int, int], img_size: int,
                  out_size: int) -> torch.Tensor:
    """Fraction of each cell of an ``out_size``^2 tiling of the model frame that a mask covers.

    masks: bool [N, H, W] in the image frame -> float32 [N, out_size, out_size]. A cell is a
    square of the padded model input (padding counts as uncovered); its covered fraction is the
    mask's area inside it, a pixel cut by the cell's edge counted by its part inside (exact area
    averaging for any ratio of image to cell size, down- or upsampling). The content occupies
    the top-left ceil(resized * out_size / img_size) cells.
    """
    rh, rw = resized_hw(image_hw, img_size)
    oh, ow = -(-rh * out_size // img_size), -(-rw * out_size // img_size)
    if masks.shape[0] == 0:
        return torch.zeros((0, out_size, out_size), dtype=torch.float32, device=masks.device)
    h, w = image_hw
    cell_h, cell_w = img_size / out_size * h / rh, img_size / out_size * w / rw  # image pixels
    # cell edges in the image frame (the model frame scales each axis by rh / H, rw / W)
    ys = (torch.arange(oh + 1, dtype=torch.float64, device=masks.device) * cell_h).clamp_(max=h)
    xs = (torch.arange(ow + 1, dtype=torch.float64, device=masks.device) * cell_w).clamp_(max=w)
    # separable: each pixel's overlap with each cell's columns, then rows, as two products
    wx = (_overlaps(xs, w) / cell_w).float()  # [W, ow]
    wy = (_overlaps(ys, h) / cell_h).float()  # [H, oh]
    cov = wy.T @ (masks.to(torch.float32) @ wx)  # [N, oh, ow]
    return F.pad(cov, (0, out_size - ow, 0, out_size - oh)).clamp_(0.0, 1.0)


def kept_masks(masks: torch.Tensor, img_size: int, grid: int,
               min_coverage: float) -> torch.Tensor:
    """Which masks (bool [N, H, W], image frame) survive on the ``grid``^2 embedding grid: those
    covering at least ``min_coverage`` of some cell. bool [N]. Every prompt mode trains these
    (the others vanish when downsampled, and the SAOM assignment drops them)."""
    image_hw = (int(masks.shape[-2]), int(masks.shape[-1]))
    return (mask_coverage(masks, image_hw, img_size, grid) >= min_coverage).flatten(1).any(1)


def assign_nearest(features: torch.Tensor, masks: torch.Tensor, img_size: int,
                   points_per_side: int, min_coverage: float = 0.5,
                   on_object: bool = True) -> Assignment:
    """The SAOM assignment for every mask of one image.

    features: [C, h, w] image embedding (tiles the model frame); masks: bool [N, H, W].
    Per mask: cells covered >= ``min_coverage`` are inside (a mask with none vanished when
    downsampled and is dropped); target = L2-normalised 0.5 * max + 0.5 * mean of the features
    inside; the cell most cosine-similar to the target is chosen, its centre mapped to the image
    frame and snapped to a grid point.

    ``on_object`` (training's choice): the arg-max is taken over the mask's own cells and the
    snap goes to the nearest grid point lying on the mask (the nearest overall when none does),
    so that an identical object elsewhere (two equal mugs) cannot win and the prompt lies on the
    object it trains. ``on_object=False`` is the reference code's choice: the arg-max over the
    whole image, snapped to the nearest grid point overall (both in one frame here); the prompt
    may then land on another object.
    """
    gh, gw = features.shape[1:]
    image_hw = (int(masks.shape[-2]), int(masks.shape[-1]))
    inside = mask_coverage(masks, image_hw, img_size, gh) >= min_coverage  # [N, gh, gw]
    keep = torch.nonzero(inside.flatten(1).any(1)).flatten()
    grid = grid_points(points_per_side, image_hw)
    if keep.numel() == 0:
        return Assignment(np.zeros(0, np.int64), np.zeros((0, 2), np.float32),
                          np.zeros(0, np.int64))
    feats = F.normalize(features.float().flatten(1), dim=0)  # [C, gh*gw], unit per location
    inside = inside[keep].flatten(1)  # [K, gh*gw]
    neg_inf = torch.finfo(feats.dtype).min
    # float32 even when training runs under fp16 autocast: neg_inf does not fit in a half
    with torch.autocast(features.device.type, enabled=False):
        # per mask, not one [K, C, h*w] tensor: vit_b with 64 masks would need 268 MB for it
        fmax = torch.stack([feats[:, m].amax(1) for m in inside])  # [K, C]
        fmean = (inside.float() @ feats.T) / inside.sum(-1, keepdim=True)
        target = F.normalize(0.5 * fmax + 0.5 * fmean, dim=1)
        sim = target @ feats  # [K, gh*gw]
        if on_object:
            sim = torch.where(inside, sim, neg_inf)
    cell = sim.argmax(1).cpu().numpy()
    # cell centre in the model frame -> image frame (inverse of ResizeLongestSide.apply_coords)
    rh, rw = resized_hw(image_hw, img_size)
    xy_model = np.stack([(cell % gw + 0.5) * img_size / gw, (cell // gw + 0.5) * img_size / gh], 1)
    xy = xy_model * np.array([image_hw[1] / rw, image_hw[0] / rh])
    dist = ((xy[:, None, :] - grid[None]) ** 2).sum(-1)  # [K, P]
    if on_object:
        gx, gy = (torch.as_tensor(ix, device=masks.device) for ix in grid_pixels(grid, image_hw))
        on_mask = masks[keep][:, gy, gx].cpu().numpy()  # [K, P]: grid point lies on the mask
        dist = np.where(on_mask.any(1, keepdims=True) & ~on_mask, np.inf, dist)
    chosen = dist.argmin(1)
    return Assignment(keep.cpu().numpy(), grid[chosen], chosen.astype(np.int64))


def assign_random(masks: torch.Tensor, rng: np.random.Generator, img_size: int, grid: int,
                  min_coverage: float = 0.5) -> Assignment:
    """Ablation: one uniformly random pixel (its centre) inside each mask that the SAOM
    assignment keeps (:func:`kept_masks` on the ``grid``^2 embedding grid), so both train the
    same objects."""
    kept = kept_masks(masks, img_size, grid, min_coverage).cpu().numpy()
    keep, points = [], []
    for i, m in enumerate(masks.cpu().numpy()):
        ys, xs = np.nonzero(m)
        if kept[i] and len(xs):
            j = rng.integers(len(xs))
            keep.append(i)
            points.append((xs[j] + 0.5, ys[j] + 0.5))
    return Assignment(np.asarray(keep, np.int64), np.asarray(points, np.float32).reshape(-1, 2),
                      np.full(len(keep), -1, np.int64))


def add_interior_points(base: Assignment, masks: torch.Tensor, points_per_side: int,
                        points_per_mask: int, rng: np.random.Generator) -> Assignment:
    """Multi-point assignment: every mask of ``base`` (a nearest-neighbour assignment) also gets up to ``points_per_mask - 1`` more
    grid points lying on it, each trained to return the whole mask.

    Why: everything mode prompts every grid point on an object, but the single nearest-neighbour
    point trains only one of them; the others return parts that compete with the whole object.
    Extra points are drawn without replacement with probability proportional to their distance
    from the mask's edge, so interior points (unambiguous about which object they are on) come
    first. The result lists ``base``'s prompts first, then the extra ones (``keep`` repeats).
    """
    image_hw = (int(masks.shape[-2]), int(masks.shape[-1]))
    grid = grid_points(points_per_side, image_hw)
    gx, gy = grid_pixels(grid, image_hw)
    keep, chosen = [base.keep], [base.grid_index]
    masks_np = masks.cpu().numpy().astype(np.uint8)
    for k, g0 in zip(base.keep.tolist(), base.grid_index.tolist()):
        # distance to the nearest pixel off the mask; 0 for grid points off the mask
        depth = cv2.distanceTransform(masks_np[k], cv2.DIST_L2, 3)[gy, gx]
        depth[g0] = 0.0  # already the mask's prompt
        candidates = np.flatnonzero(depth > 0)
        n = min(points_per_mask - 1, len(candidates))
        if n <= 0:
            continue
        w = depth[candidates]
        extra = rng.choice(candidates, n, replace=False, p=w / w.sum())
        keep.append(np.full(n, k, np.int64))
        chosen.append(np.sort(extra).astype(np.int64))
    grid_index = np.concatenate(chosen)
    return Assignment(np.concatenate(keep), grid[grid_index], grid_index)
