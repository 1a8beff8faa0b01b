"""Full-size stability scores and boxes on the CPU, straight from the low-res logits (numba).

The generator filters masks on their stability at full size and suppresses them on full-size
boxes, so each mask's logits would be resized twice (Sam.postprocess_masks: a stepped resize to
the input size, then one to the original size) and passed over several times: 8 MiB per chunk
of 32 masks at 256x256, 39 MiB at 640x480. None of that is written here.

A full-size logit is a weighted sum of a few neighbouring low-res logits, with non-negative
weights summing to one, so it lies within their range. The full-size pixels fall into blocks
that read the same low-res logits (a block per low-res cell at the input size, a little more
when resized); where a block's range is clear of all three thresholds (the two of the stability
score and the mask threshold for the box), the whole block counts at once. Only the blocks along
the masks' contours are evaluated pixel by pixel: ~10-15% of the pixels of SAOM-small's masks.

Evaluated pixels are the generator's logits bit for bit: both resizes are computed as PyTorch's
CPU kernel for channels-first tensors (Sam.postprocess_masks' path) computes them, with the same
float32 source positions and weights and the same fused multiply-adds in the same order
(checked against PyTorch's x86 kernels; a build that rounds otherwise differs in the last bit,
and only a pixel that close to a threshold would count differently).

Masks are split among PyTorch's own OpenMP threads (``openmp_team``): threads of our own
shared the cores with them, still spinning after the decoder's last op.
"""
from __future__ import annotations

import functools
from typing import Optional

import numba
import numpy as np
import torch
from numba import types
from numba.extending import intrinsic

from saom_ros import openmp_team

# A full-size logit lies within its low-res logits' range up to rounding: a few float32 ulps of
# their magnitude. A block counts at once only when its range clears a threshold by this much
# (relative to 1 + that magnitude), far more than the rounding.
MARGIN = 1e-5


@intrinsic
def _fma(typingctx, a, b, c):  # pragma: no cover
    """``a * b + c`` rounded once (llvm.fma), for float32 operands."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@numba.njit(cache=True)
def _source_positions(scale, n_out):  # pragma: no cover
    """``scale * (i + 0.5) - 0.5`` for i < n_out in float32, with the one rounding of PyTorch's
    compiled kernels (their compiler fuses it into a multiply-add)."""
    out = np.empty(n_out, np.float32)
    for i in range(n_out):
        out[i] = _fma(scale, np.float32(i) + np.float32(0.5), np.float32(-0.5))
    return out


@functools.lru_cache(maxsize=32)
def _resize_table(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """Per output index of a bilinear resize (align_corners=False) as PyTorch's CPU kernels
    compute it: first and second source index and their weights (float32)."""
    f = np.float32
    real = np.maximum(_source_positions(f(f(n_in) / f(n_out)), n_out), f(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
    w1 = np.clip(real - i0.astype(f), f(0), f(1)).astype(f)
    return i0, i0 + (i0 < n_in - 1), (f(1) - w1).astype(f), w1


@functools.lru_cache(maxsize=32)
def _axis(n_low: int, step: int, n_in: int, n_orig: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """One axis's tables: the stepped resize to the input size (uncropped, then cut to
    ``n_in``), the resize from the input to the original size, and the blocks: runs of
    full-size indices that read the same low-res indices (start, end, first, middle and last
    low-res index; a run reads at most three)."""
    stepped = tuple(a[:n_in].copy() for a in _resize_table(n_low, step * n_low))
    resize = _resize_table(n_in, n_orig)
    lo, hi = stepped[0], stepped[1]
    if n_in != n_orig:  # two neighbouring input indices: each reads two low-res ones
        lo, hi = np.minimum(lo[resize[0]], lo[resize[1]]), np.maximum(hi[resize[0]], hi[resize[1]])
    cut = np.flatnonzero((lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])) + 1
    starts = np.concatenate([[0], cut]).astype(np.int64)
    ends = np.concatenate([cut, [len(lo)]]).astype(np.int64)
    lo, hi = lo[starts], hi[starts]
    return stepped, resize, (starts, ends, lo, np.minimum(lo + 1, hi), hi)


@numba.njit(inline="always")
def _stepped_row(m, r, sr, sc, out):  # pragma: no cover
    """Row ``r`` of the stepped resize of low-res logits ``m`` [h, w] into ``out`` [input
    width]."""
    p0, p1 = sr[0][r], sr[1][r]
    for c in range(out.shape[0]):
        q0, q1, w0, w1 = sc[0][c], sc[1][c], sc[2][c], sc[3][c]
        top = _fma(m[p0, q0], w0, m[p0, q1] * w1)
        out[c] = _fma(top, sr[2][r], _fma(m[p1, q0], w0, m[p1, q1] * w1) * sr[3][r])


@numba.njit(inline="always")
def _levels(m, i, yb, xb, row_min, row_max, level_min, level_max, t_lo, t_box,
            t_hi):  # pragma: no cover
    """For each block of row run ``i``: how many thresholds its lowest and its highest
    possible logit are above (``_level``, MARGIN beyond the low-res logits it reads)."""
    a, b, c = m[yb[2][i]], m[yb[3][i]], m[yb[4][i]]
    for q in range(m.shape[1]):
        row_min[q] = min(a[q], min(b[q], c[q]))
        row_max[q] = max(a[q], max(b[q], c[q]))
    xlo, xmid, xhi = xb[2], xb[3], xb[4]
    for j in range(xlo.shape[0]):
        mn = min(row_min[xlo[j]], min(row_min[xmid[j]], row_min[xhi[j]]))
        mx = max(row_max[xlo[j]], max(row_max[xmid[j]], row_max[xhi[j]]))
        margin = np.float32(MARGIN) * (np.float32(1) + max(abs(mn), abs(mx)))
        level_min[j] = _level(mn - margin, t_lo, t_box, t_hi)
        level_max[j] = _level(mx + margin, t_lo, t_box, t_hi)


@numba.njit(inline="always")
def _level(v, t_lo, t_box, t_hi):  # pragma: no cover
    """How many of the thresholds ``v`` is above."""
    return (v > t_lo) + (v > t_box) + (v > t_hi)


@numba.njit(inline="always")
def _add_pixel(acc, masks, k, v, y, x, t_hi, t_lo, t_box):  # pragma: no cover
    """``acc`` (counts above ``t_hi`` and ``t_lo``; first and last row and column above
    ``t_box``) with the full-size logit ``v`` at (y, x) of mask ``k`` counted in; unless
    ``masks`` is None (a specialisation without the branch), its pixel set."""
    hi, lo, y0, y1, x0, x1 = acc
    hit = v > t_box
    if hit:
        y0, y1, x0, x1 = min(y0, y), max(y1, y), min(x0, x), max(x1, x)
    if masks is not None:
        masks[k, y, x] = hit
    return hi + (v > t_hi), lo + (v > t_lo), y0, y1, x0, x1


@numba.njit(inline="always")
def _add_block(acc, masks, k, level, y0, y1, x0, x1):  # pragma: no cover
    """``acc`` (``_add_pixel``) with a block [y0, y1) x [x0, x1) of mask ``k`` counted in whose
    pixels are all above ``level`` thresholds; unless ``masks`` is None, its pixels set
    (cleared beforehand) where masked."""
    hi, lo, r0, r1, c0, c1 = acc
    area = (y1 - y0) * (x1 - x0)
    if level >= 2:
        r0, r1, c0, c1 = min(r0, y0), max(r1, y1 - 1), min(c0, x0), max(c1, x1 - 1)
        if masks is not None:
            masks[k, y0:y1, x0:x1] = True
    return (hi + (area if level == 3 else 0), lo + (area if level >= 1 else 0), r0, r1, c0, c1)


@numba.njit(inline="always")
def _plain_block(acc, masks, k, m, i, j, sr, sc, yb, xb, t_hi, t_lo,
                 t_box):  # pragma: no cover
    """``acc`` with block (i, j) counted pixel by pixel where the input is the full size: it
    reads one pair of low-res rows and columns, so each column is interpolated along the rows
    once."""
    r0, r1 = sr[0][yb[0][i]], sr[1][yb[0][i]]
    for x in range(xb[0][j], xb[1][j]):
        c0, c1, w0, w1 = sc[0][x], sc[1][x], sc[2][x], sc[3][x]
        top = _fma(m[r0, c0], w0, m[r0, c1] * w1)
        bottom = _fma(m[r1, c0], w0, m[r1, c1] * w1)
        for y in range(yb[0][i], yb[1][i]):
            v = _fma(top, sr[2][y], bottom * sr[3][y])
            acc = _add_pixel(acc, masks, k, v, y, x, t_hi, t_lo, t_box)
    return acc


@numba.njit(inline="always")
def _resized_run(acc, masks, k, stepped, mixed, n_mixed, i, rr, rc, yb, xb, across,
                 t_hi, t_lo, t_box):  # pragma: no cover
    """``acc`` with the blocks ``mixed[:n_mixed]`` of row run ``i`` counted pixel by pixel from
    the stepped logits: each stepped row the run reads is interpolated across once (into
    ``across``)."""
    first = rr[0][yb[0][i]]
    for r in range(first, rr[1][yb[1][i] - 1] + 1):
        for t in range(n_mixed):
            for x in range(xb[0][mixed[t]], xb[1][mixed[t]]):
                c0, c1 = rc[0][x], rc[1][x]
                across[r - first, x] = _fma(stepped[r, c0], rc[2][x], stepped[r, c1] * rc[3][x])
    for y in range(yb[0][i], yb[1][i]):
        a0, a1, h0, h1 = rr[0][y] - first, rr[1][y] - first, rr[2][y], rr[3][y]
        for t in range(n_mixed):
            for x in range(xb[0][mixed[t]], xb[1][mixed[t]]):
                v = _fma(across[a0, x], h0, across[a1, x] * h1)
                acc = _add_pixel(acc, masks, k, v, y, x, t_hi, t_lo, t_box)
    return acc


@numba.njit(nogil=True, cache=True)
def _tally(low, first, last, sr, sc, rr, rc, yb, xb, plain, thresholds, out,
           masks):  # pragma: no cover
    """Into ``out[k]`` for each mask k in [first, last) of low-res logits ``low``: the counts
    above ``thresholds`` 0 and 1 and the first and last row and column above threshold 2 (-1
    when none); unless ``masks`` is None, into ``masks[k]`` (cleared) the full-size mask at
    threshold 2. Stepped tables ``sr``/``sc``, resize tables ``rr``/``rc`` (unused when
    ``plain``: the input is the full size), blocks ``yb``/``xb`` (``_axis``)."""
    t_hi, t_lo, t_box = thresholds[0], thresholds[1], thresholds[2]
    nx = xb[0].shape[0]
    rows, cols = (1, 1) if plain else (sr[0].shape[0], sc[0].shape[0])
    stepped = np.empty((rows, cols), np.float32)
    row_done = np.zeros(rows, np.bool_)
    span = 1
    for i in range(yb[0].shape[0]):
        span = max(span, rr[1][yb[1][i] - 1] - rr[0][yb[0][i]] + 1)
    across = np.empty((1, 1) if plain else (span, rc[0].shape[0]), np.float32)
    row_min = np.empty(low.shape[2], np.float32)
    row_max = np.empty(low.shape[2], np.float32)
    level_min = np.empty(nx, np.int64)
    level_max = np.empty(nx, np.int64)
    mixed = np.empty(nx, np.int64)
    for k in range(first, last):
        m = low[k]
        acc = (0, 0, 1 << 62, -1, 1 << 62, -1)
        row_done[:] = False
        for i in range(yb[0].shape[0]):
            _levels(m, i, yb, xb, row_min, row_max, level_min, level_max, t_lo, t_box, t_hi)
            n_mixed = 0
            for j in range(nx):
                if level_min[j] == level_max[j]:  # every pixel on the same side of each
                    acc = _add_block(acc, masks, k, level_min[j], yb[0][i], yb[1][i], xb[0][j],
                                     xb[1][j])
                elif plain:
                    acc = _plain_block(acc, masks, k, m, i, j, sr, sc, yb, xb, t_hi, t_lo, t_box)
                else:
                    mixed[n_mixed] = j
                    n_mixed += 1
            if n_mixed:
                for r in range(rr[0][yb[0][i]], rr[1][yb[1][i] - 1] + 1):  # once per mask
                    if not row_done[r]:
                        _stepped_row(m, r, sr, sc, stepped[r])
                        row_done[r] = True
                acc = _resized_run(acc, masks, k, stepped, mixed, n_mixed, i, rr, rc, yb, xb,
                                   across, t_hi, t_lo, t_box)
        out[k, :] = acc


# _team_tally's header: the arrays below (logits, tally, thresholds, masks; four tables; two
# block lists), then the values.
_ARRAYS = 4 + 4 * 4 + 2 * 5
(_N, _H, _W, _PLAIN, _MASKS_H, _MASKS_W, _THREAD_NUM,
 _NUM_THREADS) = range(2 * _ARRAYS, 2 * _ARRAYS + 8)
_HEADER = _NUM_THREADS + 1


@numba.njit(inline="always")
def _table_at(head, i):  # pragma: no cover
    """A resize table (``_resize_table``) from header index ``i``."""
    return (openmp_team.array_at(head, i, np.int64), openmp_team.array_at(head, i + 2, np.int64),
            openmp_team.array_at(head, i + 4, np.float32),
            openmp_team.array_at(head, i + 6, np.float32))


@numba.njit(inline="always")
def _blocks_at(head, i):  # pragma: no cover
    """Block runs (``_axis``) from header index ``i``."""
    return (openmp_team.array_at(head, i, np.int64), openmp_team.array_at(head, i + 2, np.int64),
            openmp_team.array_at(head, i + 4, np.int64),
            openmp_team.array_at(head, i + 6, np.int64),
            openmp_team.array_at(head, i + 8, np.int64))


@numba.njit(inline="always")
def _team_part(head, masks):  # pragma: no cover
    """``_tally`` of the calling OpenMP thread's part of the masks, its arguments in the header
    ``_run`` packs."""
    n = head[_N]
    low = openmp_team.array_at(head, 0, np.float32).reshape((n, head[_H], head[_W]))
    out = openmp_team.array_at(head, 2, np.int64).reshape((n, 6))
    first, last = openmp_team.my_part(n, head[_THREAD_NUM], head[_NUM_THREADS])
    _tally(low, first, last, _table_at(head, 8), _table_at(head, 16), _table_at(head, 24),
           _table_at(head, 32), _blocks_at(head, 40), _blocks_at(head, 50), head[_PLAIN] != 0,
           openmp_team.array_at(head, 4, np.float32), out, masks)


@numba.cfunc(types.void(types.voidptr), cache=True)
def _team_tally(data):  # pragma: no cover
    """``_team_part`` without masks."""
    _team_part(numba.carray(data, (_HEADER,), np.int64), None)


@numba.cfunc(types.void(types.voidptr), cache=True)
def _team_masks(data):  # pragma: no cover
    """``_team_part`` writing the masks."""
    head = numba.carray(data, (_HEADER,), np.int64)
    _team_part(head, openmp_team.array_at(head, 6, np.bool_).reshape(
        (head[_N], head[_MASKS_H], head[_MASKS_W])))


def _run(logits: torch.Tensor, step: int, input_hw: tuple[int, int], orig_hw: tuple[int, int],
         thresholds: np.ndarray, masks: Optional[np.ndarray]) -> np.ndarray:
    """``_tally``'s [N, 6] for CPU low-res logits [N, h, w] (N > 0) and float32 ``thresholds``
    [3]; with ``masks`` (bool [N, H, W], cleared), the masks into it."""
    n, h, w = logits.shape
    sr, rr, yb = _axis(h, step, input_hw[0], orig_hw[0])
    sc, rc, xb = _axis(w, step, input_hw[1], orig_hw[1])
    plain = tuple(input_hw) == tuple(orig_hw)
    low = logits.detach().float().contiguous().numpy()
    tally = np.empty((n, 6), np.int64)
    threads, team = min(torch.get_num_threads(), n), openmp_team.team()
    if threads > 1 and team is not None:  # on PyTorch's own threads
        written = masks if masks is not None else np.zeros((1, 1, 1), np.bool_)
        header = openmp_team.pack(
            [low, tally, thresholds, written, *sr, *sc, *rr, *rc, *yb, *xb],
            [n, h, w, plain, *written.shape[1:], team.thread_num, team.num_threads])
        openmp_team.run(_team_tally if masks is None else _team_masks, header, threads)
    else:
        _tally(low, 0, n, sr, sc, rr, rc, yb, xb, plain, thresholds, tally, masks)
    return tally


def _boxes(tally: np.ndarray) -> torch.Tensor:
    """``full_size.boxes_of``'s float [N, 4] from ``_tally``'s extents."""
    boxes = tally[:, [4, 2, 5, 3]]
    boxes[tally[:, 3] < 0] = 0  # an empty mask's box
    return torch.from_numpy(boxes).float()


def stability_and_boxes(logits: torch.Tensor, step: int, input_hw: tuple[int, int],
                        orig_hw: tuple[int, int], threshold: float, offset: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``full_size.stability_scores`` at ``threshold`` +- ``offset`` [N] and
    ``full_size.boxes_of`` at ``threshold`` [N, 4] of the full-size masks
    (``full_size.upsample(logits, step, input_hw, orig_hw)``) of CPU low-res logits [N, h, w]."""
    if logits.shape[0] == 0:
        return logits.new_zeros(0), logits.new_zeros(0, 4)
    thresholds = np.array([threshold + offset, threshold - offset, threshold], np.float32)
    tally = _run(logits, step, input_hw, orig_hw, thresholds, None)
    # float32 counts and division, as the tensor path computes them (0 / 0 is NaN)
    stability = torch.from_numpy(tally[:, 0]).float() / torch.from_numpy(tally[:, 1]).float()
    return stability, _boxes(tally)


def masks_and_boxes(logits: torch.Tensor, step: int, input_hw: tuple[int, int],
                    orig_hw: tuple[int, int], threshold: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-size masks (bool [N, H, W]) at ``threshold`` of CPU low-res logits [N, h, w]
    and their boxes (float [N, 4], as ``full_size.boxes_of``): only the blocks that
    ``threshold`` crosses are evaluated, the others filled."""
    masks = torch.zeros((logits.shape[0],) + tuple(orig_hw), dtype=torch.bool)
    if logits.shape[0] == 0:
        return masks, logits.new_zeros(0, 4)
    tally = _run(logits, step, input_hw, orig_hw, np.full(3, threshold, np.float32),
                 masks.numpy())
    return masks, _boxes(tally)


def compile_kernel() -> None:
    """Compile the kernel's calling-thread forms now, with and without masks (numba compiles on
    first use: seconds, then cached on disk; the OpenMP forms compile when imported)."""
    one = torch.zeros(1, 2, 2)  # one mask: the calling thread
    stability_and_boxes(one, 4, (8, 8), (8, 8), 0.0, 1.0)
    masks_and_boxes(one, 4, (8, 8), (8, 8), 0.0)
