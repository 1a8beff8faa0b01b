"""Full-size stability scores and boxes on the CPU in one compiled pass (numba).

The generator filters masks on their stability at full size and suppresses them on full-size
boxes. With PyTorch ops that is ~8 memory-bound passes over each chunk's full-size logits (the
resize to the original size, two thresholds and their counts, row and column maxima): 8 MiB per
chunk of 32 masks at 256x256, 39 MiB at 640x480. Here one loop makes each full-size logit from
the input-sized ones (the first, stepped resize stays PyTorch's), counts it against both
stability thresholds and marks its row and column for the box; nothing of the full size is
written. Row blocks run on PyTorch's thread count, in plain Python threads (the kernel releases
the GIL): numba's own thread pools and PyTorch's OpenMP threads spun against each other between
the decoder's operations (a 256x256 frame took 2.7x as long).
Where the image is the input size, the counts read PyTorch's logits and are exact. Where it is
resized, the interpolation weights are PyTorch's (float32 source indices), but the sums round
differently: logits differ from PyTorch's by up to 4e-5 on 640x480 frames, so a pixel that close
to a threshold may count on the other side (stability scores differed by up to 1.5e-5).
"""
from __future__ import annotations

import concurrent.futures
import functools
import os

import numba
import numpy as np
import torch


@functools.lru_cache(maxsize=16)
def _resize_table(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """Per output index of a bilinear resize (align_corners=False) as PyTorch's CPU kernel
    computes it: first and second source index and their weights (float32)."""
    f = np.float32
    real = np.maximum(f(f(n_in) / f(n_out)) * (np.arange(n_out, dtype=f) + f(0.5)) - f(0.5), f(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
    w1 = np.clip(real - i0.astype(f), f(0), f(1)).astype(f)
    return i0, i0 + (i0 < n_in - 1), (f(1) - w1).astype(f), w1


@numba.njit(cache=True, nogil=True)
def _tally_resized(s, rows, cols, t_hi, t_lo, t_box, first, last):  # pragma: no cover
    """Counts above ``t_hi`` and ``t_lo`` per mask, and the rows and columns holding a logit
    above ``t_box``, of ``s`` [h, w, N] resized by the tables ``rows`` and ``cols``
    (``_resize_table``), for output rows ``first`` to ``last`` (exclusive; ``row_hit`` holds
    those rows only)."""
    ry0, ry1, wy0, wy1 = rows
    cx0, cx1, wx0, wx1 = cols
    w, n = cx0.shape[0], s.shape[2]
    above_hi = np.zeros(n, np.int64)
    above_lo = np.zeros(n, np.int64)
    row_hit = np.zeros((last - first, n), np.bool_)
    col_hit = np.zeros((w, n), np.bool_)
    v = np.empty(n, np.float32)
    for y in range(first, last):
        a0, a1, h0, h1 = ry0[y], ry1[y], wy0[y], wy1[y]
        for x in range(w):
            b0, b1 = cx0[x], cx1[x]
            w00, w01, w10, w11 = h0 * wx0[x], h0 * wx1[x], h1 * wx0[x], h1 * wx1[x]
            for k in range(n):
                v[k] = (w00 * s[a0, b0, k] + w01 * s[a0, b1, k]
                        + w10 * s[a1, b0, k] + w11 * s[a1, b1, k])
            _count(v, t_hi, t_lo, t_box, above_hi, above_lo, row_hit[y - first], col_hit[x])
    return above_hi, above_lo, row_hit, col_hit


@numba.njit(cache=True, nogil=True)
def _tally_plain(s, rows, cols, t_hi, t_lo, t_box, first, last):  # pragma: no cover
    """``_tally_resized`` where the top-left part of ``s`` is the full size already (the tables
    give only its size)."""
    w, n = cols[0].shape[0], s.shape[2]
    above_hi = np.zeros(n, np.int64)
    above_lo = np.zeros(n, np.int64)
    row_hit = np.zeros((last - first, n), np.bool_)
    col_hit = np.zeros((w, n), np.bool_)
    for y in range(first, last):
        for x in range(w):
            _count(s[y, x], t_hi, t_lo, t_box, above_hi, above_lo, row_hit[y - first],
                   col_hit[x])
    return above_hi, above_lo, row_hit, col_hit


@numba.njit(inline="always")
def _count(v, t_hi, t_lo, t_box, above_hi, above_lo, in_row, in_col):  # pragma: no cover
    """The counts and marks of one pixel's logits ``v`` [N]. (The two passes are separate
    functions: one loop taking either case ran the other 30-60% slower.)"""
    for k in range(v.shape[0]):
        above_hi[k] += v[k] > t_hi
        above_lo[k] += v[k] > t_lo
        hit = v[k] > t_box
        in_row[k] |= hit
        in_col[k] |= hit


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """Threads for the row blocks beyond the caller's, made once per count and process (a
    forked child inherits the pool but not its threads)."""
    return _pool_of(max(1, workers), os.getpid())


@functools.lru_cache(maxsize=None)
def _pool_of(workers: int, pid: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(workers, "saom-full-size")


def _extent(hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index [N] of the True entries of ``hit`` [L, N] (-1 where none)."""
    found = hit.any(0)
    first = np.where(found, hit.argmax(0), -1)
    last = np.where(found, hit.shape[0] - 1 - hit[::-1].argmax(0), -1)
    return first, last


def stability_and_boxes(stepped: torch.Tensor, input_hw: tuple[int, int],
                        orig_hw: tuple[int, int], threshold: float, offset: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``full_size.stability_scores`` at ``threshold`` +- ``offset`` [N] and ``full_size.boxes_of``
    at ``threshold`` [N, 4] of the full-size masks of C-contiguous CPU logits ``stepped``
    [h, w, N] (``full_size.stepped`` before its crop: one array layout to compile for), cropped
    to ``input_hw`` and resized to ``orig_hw`` on the fly."""
    n = stepped.shape[-1]
    if n == 0:
        return stepped.new_zeros(0), stepped.new_zeros(0, 4)
    rows, cols = _resize_table(input_hw[0], orig_hw[0]), _resize_table(input_hw[1], orig_hw[1])
    tally = _tally_resized if tuple(input_hw) != tuple(orig_hw) else _tally_plain
    args = (stepped.detach().float().contiguous().numpy(), rows, cols,
            np.float32(threshold + offset), np.float32(threshold - offset), np.float32(threshold))
    # Row blocks on PyTorch's thread count: the calling thread takes the first, pool threads
    # (which sleep when idle, unlike numba's and OpenMP's) the others.
    parts = max(1, min(torch.get_num_threads(), orig_hw[0]))
    bounds = [orig_hw[0] * i // parts for i in range(parts + 1)]
    others = [_pool(parts - 1).submit(tally, *args, a, b)
              for a, b in zip(bounds[1:-1], bounds[2:])]
    results = [tally(*args, bounds[0], bounds[1])] + [f.result() for f in others]
    above_hi = sum(r[0] for r in results)
    above_lo = sum(r[1] for r in results)
    row_hit = np.concatenate([r[2] for r in results])
    col_hit = np.logical_or.reduce([r[3] for r in results])
    (y0, y1), (x0, x1) = _extent(row_hit), _extent(col_hit)
    boxes = np.stack([x0, y0, x1, y1], 1)
    boxes[y1 < 0] = 0
    # float32 counts and division, as the tensor path computes them (0 / 0 is NaN)
    stability = torch.from_numpy(above_hi).float() / torch.from_numpy(above_lo).float()
    return stability, torch.from_numpy(boxes).float()


def compile_kernel() -> None:
    """Compile both passes now (numba compiles on first use: ~3 s each, then cached on disk)."""
    for orig_hw in ((1, 1), (2, 2)):
        stability_and_boxes(torch.zeros(1, 1, 8), (1, 1), orig_hw, 0.0, 1.0)
