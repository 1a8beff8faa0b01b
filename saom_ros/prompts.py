"""Point prompts for everything mode: the regular grid, and points chosen from earlier masks.

All points are (x, y) in original-image pixels, float32, as SamAutomaticMaskGenerator computes
its grid (``build_point_grid`` scaled by the image size).
"""
from __future__ import annotations

import cv2
import numpy as np
from segment_anything.utils.amg import build_point_grid

# Pixels from the border a further point of a mask must lie (thinner parts get none).
MIN_EXTRA_DEPTH = 3.0


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


def inside_points(masks: np.ndarray, per_mask: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_mask`` points well inside each mask of ``masks`` (bool [N, H, W]): the pixel
    farthest from the mask's border (maximum of the L2 distance transform), then the farthest
    outside the disc of that distance around the points already taken; pixel centres, x, y.

    Returns the points [K, 2] and the index of the mask each belongs to [K]; empty masks (and
    parts too thin to hold another point) give none.
    """
    points, owner = [], []
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows) == 0:
            continue
        # Distances inside the mask's box with a one-pixel zero border: every pixel beyond it
        # is background or beyond the image edge, and farther than that border. So the point
        # stays inside a mask cut by the frame, and a small mask costs a small transform.
        y0, x0 = rows[0], cols[0]
        crop = mask[y0:rows[-1] + 1, x0:cols[-1] + 1]
        padded = cv2.copyMakeBorder(crop.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
        for k in range(per_mask):
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            if dist[y, x] < (1.0 if k == 0 else MIN_EXTRA_DEPTH):
                break
            points.append((x0 + x - 1 + 0.5, y0 + y - 1 + 0.5))
            owner.append(i)
            if k + 1 < per_mask:
                cv2.circle(dist, (int(x), int(y)), int(np.ceil(dist[y, x])), 0.0, -1)
    return (np.asarray(points, np.float32).reshape(-1, 2), np.asarray(owner, np.int64))
