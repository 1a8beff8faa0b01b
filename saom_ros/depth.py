"""Instances in 3D from a registered depth image: depth units, back-projection, robust boxes.

No ROS here: the node converts messages to arrays and calls these functions. Coordinates are the
colour camera's optical frame (x right, y down, z forward, metres); pixel (u, v) has its centre at
(u, v) as in ROS image coordinates, so a point at depth z back-projects to
((u - cx) z / fx, (v - cy) z / fy, z).

Flying pixels (depth interpolated between an object and what lies behind it at its silhouette, or
background depth under a mask that spills over the edge) would stretch a min/max box far along the
viewing ray. The robust rule (Tukey's fences on depth): an instance keeps the points whose depth
lies within [Q1 - 1.5 IQR, Q3 + 1.5 IQR] of its own depths (quartiles Q1, Q3, IQR = Q3 - Q1, of
FENCE_SAMPLES evenly spaced pixels of the instance), widened to at least its median +-
MIN_BAND_M; its box is the min/max extent of the kept points.
For a uniform spread of depths (a surface seen at a slant) the fences cover the whole spread, so
only outliers are cut.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

# encoding -> stored units per metre (REP 118: 16UC1 in millimetres, 32FC1 in metres)
DEPTH_SCALES: dict[str, float] = {"16UC1": 1000.0, "mono16": 1000.0, "32FC1": 1.0}
# Tukey's fences: kept depths lie within FENCE interquartile ranges beyond the quartiles...
FENCE = 1.5
# ...or within this many metres of the median, whichever is wider (sensor noise on a flat face).
MIN_BAND_M = 0.05
# The quartiles come from this many evenly spaced pixels of an instance.
FENCE_SAMPLES = 256
# Relative difference of width/height ratios under which a depth image counts as the same shape.
ASPECT_TOLERANCE = 0.01
# Smallest focal length (pixels) taken from camera info: below a pixel the field of view of any
# real image is near 180 degrees, and a denormal one (1e-300) made infinite boxes.
MIN_FOCAL_PX = 1.0
_QUIET_NAN_BITS = np.uint32(0x7FC00000)  # exponent all ones, top mantissa bit: NaN


class DepthError(ValueError):
    """Depth or camera data that cannot be used; the text says why."""


@dataclasses.dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of the colour image, in its pixels."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_camera_info(cls, k: Sequence[float], info_size: tuple[int, int],
                         image_size: tuple[int, int], binning: tuple[int, int] = (1, 1),
                         roi: tuple[int, int, int, int] = (0, 0, 0, 0)) -> "Intrinsics":
        """From a camera matrix ``k`` (row-major 3x3) of the full-resolution ``info_size`` (h, w)
        for the image the camera sends: the ``roi`` (x offset, y offset, width, height in
        full-resolution pixels; a zero size: the whole image) binned by ``binning`` (x, y; 0
        counts as 1), as CameraInfo describes it; then rescaled to ``image_size`` (h, w) when
        that is another resolution of the same view. An info size of (0, 0) (not filled in) is
        taken to be the image's."""
        k = np.asarray(k, dtype=np.float64)
        if k.shape != (9,) or not np.all(np.isfinite(k)):
            raise DepthError(f"camera info K must be 9 finite numbers, got {k.tolist()}")
        fx, fy, cx, cy = k[0], k[4], k[2], k[5]
        if fx < MIN_FOCAL_PX or fy < MIN_FOCAL_PX:
            raise DepthError(f"camera info K has fx={fx}, fy={fy}; both must be at least "
                             f"{MIN_FOCAL_PX} pixel (an uncalibrated camera sends zeros)")
        (ih, iw), (h, w) = info_size, image_size
        x0, y0, rw, rh = roi
        if rw > 0 and rh > 0:  # the region's pixels keep their size: shift the centre
            cx, cy, ih, iw = cx - x0, cy - y0, rh, rw
        bx, by = (max(1, b) for b in binning)
        if (bx, by) != (1, 1):
            fx, fy, cx, cy = _scaled((fx, fy, cx, cy), 1 / bx, 1 / by)
            ih, iw = ih // by, iw // bx
        if (ih, iw) in ((0, 0), (h, w)):
            return cls(float(fx), float(fy), float(cx), float(cy))
        if ih <= 0 or iw <= 0 or not same_aspect((ih, iw), (h, w)):
            raise DepthError(f"camera info is for {iw}x{ih}, the image is {w}x{h}: not the same "
                             "aspect ratio")
        return cls(*(float(v) for v in _scaled((fx, fy, cx, cy), w / iw, h / ih)))


def _scaled(fxy_cxy: tuple[float, ...], sx: float, sy: float) -> tuple[float, ...]:
    """Intrinsics (fx, fy, cx, cy) of the image scaled by (sx, sy) about pixel edges, not
    centres: pixel u covers [u - 0.5, u + 0.5]."""
    fx, fy, cx, cy = fxy_cxy
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


def same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether (h, w) sizes ``a`` and ``b`` have the same width/height ratio."""
    ra, rb = a[1] / a[0], b[1] / b[0]
    return abs(ra - rb) <= ASPECT_TOLERANCE * rb


def depth_scale(encoding: str) -> float:
    """Stored units per metre of a depth image ``encoding``; DepthError if it is not supported."""
    if encoding not in DEPTH_SCALES:
        raise DepthError(f"unsupported depth encoding {encoding!r}; supported: "
                         f"{', '.join(DEPTH_SCALES)}")
    return DEPTH_SCALES[encoding]


def depth_in_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """float32 metres, NaN where the depth is invalid (0, NaN, inf or negative)."""
    scale = np.float32(depth_scale(encoding))
    metres = depth.astype(np.float32)  # a copy
    if np.issubdtype(depth.dtype, np.integer):
        metres[depth == 0] = np.nan  # integers: only 0 is invalid (one pass instead of three)
    else:
        with np.errstate(invalid="ignore"):
            metres[~(np.isfinite(metres) & (metres > 0))] = np.nan
    # Divided, not multiplied by 0.001: 1500 mm is exactly the float32 nearest 1.5 m.
    metres /= scale
    return metres


def match_size(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``depth`` at ``size`` (h, w): as it is, or scaled by nearest neighbour (never
    interpolated: a mean of an object's and the background's depth is nobody's depth) when the
    aspect ratio is the same. DepthError otherwise."""
    h, w = size
    dh, dw = depth.shape
    if (dh, dw) == (h, w):
        return depth
    if not same_aspect((dh, dw), (h, w)):
        raise DepthError(f"depth image is {dw}x{dh}, the colour image {w}x{h}: not the same "
                         "aspect ratio, so it cannot be registered to it")
    rows = ((np.arange(h) + 0.5) * dh / h).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * dw / w).astype(np.intp)
    return depth[rows[:, None], cols]


@dataclasses.dataclass
class Boxes3D:
    """Robust 3D boxes of the labels of a label image that have valid depth, in label order."""

    labels: np.ndarray  # int [K], values of the label image (1..)
    centers: np.ndarray  # float64 [K, 3], box centres (x, y, z) in metres
    sizes: np.ndarray  # float64 [K, 3], box extents in metres
    points: np.ndarray  # float32 [P, 3], the kept points of all labels, grouped by label
    point_labels: np.ndarray  # uint16 [P], the label of each point

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def boxes_3d(labels: np.ndarray, depth: np.ndarray, intrinsics: Intrinsics,
             with_points: bool = False, encoding: str = "32FC1") -> Boxes3D:
    """Back-project every labelled pixel with valid depth and box each label's kept points.

    ``labels``: uint16 [H, W], 0 = no instance; ``depth``: [H, W] as stored in an image of
    ``encoding`` (e.g. uint16 millimetres), registered (``match_size``); only the labelled valid
    pixels are converted to metres (``depth_in_metres``). Labels without valid depth are left out.
    The kept points themselves are returned only ``with_points`` (else ``points`` is empty).
    """
    if labels.shape != depth.shape:
        raise DepthError(f"label image {labels.shape} and depth {depth.shape} differ in size")
    depth_scale(encoding)  # the encoding is checked also when no pixel needs converting
    h, w = labels.shape
    flat_labels, flat_depth = labels.ravel(), depth.ravel()
    usable = flat_labels > 0
    with np.errstate(invalid="ignore"):  # NaN > 0 is False: invalid depth drops out here
        usable &= flat_depth > 0
        if not np.issubdtype(depth.dtype, np.integer):
            usable &= flat_depth < np.inf
    pixels = np.flatnonzero(usable)
    pixel_labels = flat_labels.take(pixels)
    if not len(pixels):
        return Boxes3D(np.zeros(0, np.intp), np.zeros((0, 3)), np.zeros((0, 3)),
                       np.zeros((0, 3), np.float32), np.zeros(0, np.uint16))
    # Group pixels by label: a stable argsort of 16-bit keys is a radix sort (linear time).
    # (take, not fancy indexing: the same gather, faster on 1-D arrays.)
    sort = np.argsort(pixel_labels, kind="stable")
    order = pixels.take(sort)
    # Counts by a binary search per label through the sort (neither a histogram of every pixel
    # nor the sorted labels are needed); the keys in the labels' dtype, or numpy would search a
    # converted copy of them.
    last = int(pixel_labels[sort[-1]])
    firsts = np.searchsorted(pixel_labels, np.arange(1, last + 1, dtype=pixel_labels.dtype),
                             sorter=sort)
    counts = np.diff(firsts, append=len(pixels))
    z = depth_in_metres(flat_depth.take(order), encoding)  # gathered as stored: fewer bytes
    present = np.flatnonzero(counts)
    counts = counts[present]
    starts = _starts(counts)

    low, high = _fences(z, starts, counts)
    # Dropped points become NaN, which fmin/fmax ignore (cheaper than compressing the arrays),
    # through their bits: any float with a quiet NaN's bits OR-ed in is NaN, and this is several
    # times faster than a masked store.
    dropped = z < np.repeat(low, counts)
    dropped |= z > np.repeat(high, counts)
    bits = z.view(np.uint32)
    bits |= dropped * _QUIET_NAN_BITS
    rays = _rays(intrinsics, h, w).take(order)
    x, y = rays.real * z, rays.imag * z
    # The median (a pixel's depth) always passes, so every present label keeps a point.
    low = np.stack([np.fmin.reduceat(a, starts) for a in (x, y, z)], axis=1).astype(np.float64)
    high = np.stack([np.fmax.reduceat(a, starts) for a in (x, y, z)], axis=1).astype(np.float64)
    if with_points:
        keep = ~np.isnan(z)
        points = np.stack([x[keep], y[keep], z[keep]], axis=1)
        point_labels = np.repeat(present + 1, np.add.reduceat(keep, starts, dtype=np.intp))
        point_labels = point_labels.astype(np.uint16)
    else:
        points, point_labels = np.zeros((0, 3), np.float32), np.zeros(0, np.uint16)
    return Boxes3D(labels=present + 1, centers=(low + high) / 2, sizes=high - low,
                   points=points, point_labels=point_labels)


def _starts(counts: np.ndarray) -> np.ndarray:
    """Where each of consecutive groups of these sizes starts."""
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.intp)


def _fences(z: np.ndarray, starts: np.ndarray, counts: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per contiguous group ``z[start:start + count]``: the lowest and highest depth kept.

    The quartiles are those of FENCE_SAMPLES evenly spaced pixels of each group (row-major
    order, so spread over the whole instance; small groups repeat pixels): all groups are then
    sorted at once, at a cost that does not grow with their size."""
    picks = starts[:, None] + (np.arange(FENCE_SAMPLES) * counts[:, None]) // FENCE_SAMPLES
    samples = np.sort(z.take(picks), axis=1)
    q1, median, q3 = (samples[:, FENCE_SAMPLES * k // 4] for k in (1, 2, 3))
    spread = FENCE * (q3 - q1)
    return (np.minimum(q1 - spread, median - MIN_BAND_M),
            np.maximum(q3 + spread, median + MIN_BAND_M))


@functools.lru_cache(maxsize=4)
def _rays(intrinsics: Intrinsics, h: int, w: int) -> np.ndarray:
    """Per flat pixel index, (u - cx) / fx + 1j (v - cy) / fy: a point's x and y are these times
    its depth. Complex so that one gather fetches both; cached (camera and size rarely change)."""
    u = (np.arange(w, dtype=np.float64) - intrinsics.cx) / intrinsics.fx
    v = (np.arange(h, dtype=np.float64) - intrinsics.cy) / intrinsics.fy
    return (u[None, :] + 1j * v[:, None]).astype(np.complex64).ravel()
