"""Point prompts for everything mode: the regular grid, and points chosen from earlier masks.

All points are (x, y) in original-image pixels, float32, as SamAutomaticMaskGenerator computes
its grid (``build_point_grid`` scaled by the image size).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
from segment_anything.utils.amg import build_point_grid

from saom_ros.full_size import mask_extent

# Pixels from the border a further point of a mask must lie (thinner parts get none).
MIN_EXTRA_DEPTH = 3.0
# Longest box side (pixels) searched at full resolution by inside_points; longer ones in blocks.
DEPTH_SIDE = 64


def grid_points(points_per_side: int, hw: tuple[int, int]) -> np.ndarray:
    """The everything-mode grid for an image of size ``hw``: [n*n, 2] x, y pixels."""
    return (build_point_grid(points_per_side) * np.array(hw[::-1])).astype(np.float32)


def grid_phase(points_per_side: int, stride: int, phase: int) -> np.ndarray:
    """bool [n*n] over the grid's points (row-major): the points of one of the stride^2
    interleaved sub-grids of step ``stride``; phases 0 .. stride^2 - 1 together cover the grid."""
    rows, cols = np.divmod(np.arange(points_per_side ** 2), points_per_side)
    phase %= stride * stride
    return (rows % stride == phase // stride) & (cols % stride == phase % stride)


def covered(points: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """bool [n]: whether ``coverage`` (bool [H, W]) is set at each point's pixel."""
    if len(points) == 0:
        return np.zeros(0, bool)
    h, w = coverage.shape
    xs = np.clip(points[:, 0].astype(np.int64), 0, w - 1)
    ys = np.clip(points[:, 1].astype(np.int64), 0, h - 1)
    return coverage[ys, xs]


def inside_points(masks: np.ndarray, per_mask: int = 1, boxes: Optional[np.ndarray] = None,
                  which: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_mask`` points well inside each mask of ``masks`` (bool [N, H, W]): the pixel
    farthest from the mask's border (maximum of the L2 distance transform), then the farthest
    outside the disc of that distance around the points already taken; pixel centres, x, y.
    ``boxes`` (float [N, 4], x0, y0, x1, y1 inclusive, as ``Instances.boxes``): each mask's
    extent, when known, so that only the box is read (else found by scanning the whole mask).
    ``which`` (indices into ``masks``): the masks to search, when not all of them.

    A mask whose box is longer than DEPTH_SIDE pixels is searched on blocks of pixels (a block
    counts when all of its pixels are in the mask), so that the transform stays small at camera
    resolutions (15 masks of 1280x720: 5.7 ms at full resolution); the point is then a block's
    centre, within half a block of the deepest pixel. A mask with no whole block (thin) is
    searched at full resolution.

    Returns the points [K, 2] and the index of the mask each belongs to [K]; empty masks (and
    parts too thin to hold another point) give none.
    """
    points, owner = [], []
    for i in range(len(masks)) if which is None else np.asarray(which).tolist():
        mask = masks[i]
        extent = mask_extent(mask) if boxes is None else boxes[i].astype(np.int64).tolist()
        if extent is None:
            continue
        x0, y0, x1, y1 = extent
        crop = mask[y0:y1 + 1, x0:x1 + 1]
        block = -(-max(crop.shape) // DEPTH_SIDE)
        found = _deepest(crop, per_mask, block) if block > 1 else []
        found = found or _deepest(crop, per_mask, 1)
        points += [(x0 + x, y0 + y) for x, y in found]
        owner += [i] * len(found)
    return (np.asarray(points, np.float32).reshape(-1, 2), np.asarray(owner, np.int64))


def _deepest(crop: np.ndarray, per_mask: int, block: int) -> list[tuple[float, float]]:
    """``inside_points``' points (x, y in the crop's pixels) of one mask's box ``crop``, found
    on ``block`` x ``block`` blocks of pixels."""
    if block > 1:  # whole blocks only: the last partial row and column of them count as outside
        h, w = crop.shape[0] // block, crop.shape[1] // block
        if h == 0 or w == 0:
            return []
        rows = crop[:h * block, :w * block].reshape(h, block, w * block).all(1)
        crop = np.ascontiguousarray(rows.reshape(h, w, block).all(2))
    # Distances inside the box with a one-pixel zero border: every pixel beyond it is
    # background or beyond the image edge, and farther than that border. So the point stays
    # inside a mask cut by the frame, and a small mask costs a small transform.
    padded = cv2.copyMakeBorder(crop.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    found = []
    for k in range(per_mask):
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        if dist[y, x] * block < (1.0 if k == 0 else MIN_EXTRA_DEPTH):
            break
        found.append(((x - 1) * block + block / 2, (y - 1) * block + block / 2))
        if k + 1 < per_mask:
            cv2.circle(dist, (int(x), int(y)), int(np.ceil(dist[y, x])), 0.0, -1)
    return found

