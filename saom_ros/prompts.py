"""Point prompts for everything mode: the regular grid, and points chosen from earlier masks.

All points are (x, y) in original-image pixels, float32, as SamAutomaticMaskGenerator computes
its grid (``build_point_grid`` scaled by the image size).
"""
from __future__ import annotations

import cv2
import numpy as np
from segment_anything.utils.amg import build_point_grid


def grid_points(points_per_side: int, hw: tuple[int, int]) -> np.ndarray:
    """The everything-mode grid for an image of size ``hw``: [n*n, 2] x, y pixels."""
    return (build_point_grid(points_per_side) * np.array(hw[::-1])).astype(np.float32)


def covered(points: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """bool [n]: whether ``coverage`` (bool [H, W]) is set at each point's pixel."""
    if len(points) == 0:
        return np.zeros(0, bool)
    h, w = coverage.shape
    xs = np.clip(points[:, 0].astype(np.int64), 0, w - 1)
    ys = np.clip(points[:, 1].astype(np.int64), 0, h - 1)
    return coverage[ys, xs]


def inside_points(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One point well inside each mask of ``masks`` (bool [N, H, W]): the pixel farthest from
    the mask's border (maximum of the L2 distance transform), its centre in x, y.

    Returns the points [N, 2] and bool [N], False for empty masks (their point is meaningless).
    """
    points = np.zeros((len(masks), 2), np.float32)
    valid = np.zeros(len(masks), bool)
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        # A one-pixel zero border: distances are to the border of the mask, including the
        # image edge, so the point stays inside a mask cut by the frame.
        dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        points[i] = (x - 1 + 0.5, y - 1 + 0.5)
        valid[i] = True
    return points, valid
