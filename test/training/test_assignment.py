"""Nearest-neighbour assignment on constructed features, in one frame for any image size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from saom_ros import prompts
from saom_ros.candidates import Frame
from saom_ros.training.assignment import (
    add_interior_points, assign_nearest, assign_random, grid_points, mask_coverage, resized_hw,
    to_model_frame)

IMG_SIZE = 256   # model input; 16x16 embedding cells of 16 model pixels
GRID = 16
C = 8


def _features(cells_on: list[tuple[int, int]], special: tuple[int, int],
              decoy: tuple[int, int] | None = None) -> torch.Tensor:
    """Background e3; object cells e1; one object cell e1 + 0.2 e2, which is the location most
    similar to 0.5 max + 0.5 mean of the object (worked out in the test); a decoy cell outside
    the object gets exactly the target direction, so it would win an image-wide arg-max."""
    f = torch.zeros(C, GRID, GRID)
    f[2] = 1.0
    for i, j in cells_on:
        f[:, i, j] = 0.0
        f[0, i, j] = 1.0
    f[:, special[0], special[1]] = 0.0
    f[0, special[0], special[1]] = 1.0
    f[1, special[0], special[1]] = 0.2
    if decoy is not None:
        n = len(cells_on)
        f[:, decoy[0], decoy[1]] = 0.0
        f[0, decoy[0], decoy[1]] = 1.0
        f[1, decoy[0], decoy[1]] = 0.1 + 0.1 / n
    return f


def _cells_of(mask: np.ndarray) -> list[tuple[int, int]]:
    cov = mask_coverage(torch.from_numpy(mask)[None], mask.shape, IMG_SIZE, GRID)[0]
    return [tuple(map(int, ij)) for ij in torch.nonzero(cov >= 0.5)]


@pytest.mark.parametrize("hw", [(96, 128), (128, 96), (200, 200)])
def test_chosen_point_is_grid_point_nearest_the_max_similarity_location(hw):
    h, w = hw
    mask = np.zeros(hw, bool)
    mask[h // 4: h // 4 + h // 2, w // 3: w // 3 + w // 2] = True
    cells = _cells_of(mask)
    special = cells[len(cells) // 2 + 1]
    decoy = (GRID - 1, GRID - 1) if (GRID - 1, GRID - 1) not in cells else (0, 0)
    feats = _features(cells, special, decoy)
    pps = 8
    a = assign_nearest(feats, torch.from_numpy(mask)[None], IMG_SIZE, pps)
    assert a.keep.tolist() == [0]
    # the special cell's centre, mapped from the model frame to the image frame by hand
    rh, rw = resized_hw(hw, IMG_SIZE)
    cell_px = IMG_SIZE / GRID
    centre = np.array([(special[1] + 0.5) * cell_px * w / rw, (special[0] + 0.5) * cell_px * h / rh])
    grid = np.array([[(i + 0.5) / pps * w, (j + 0.5) / pps * h]
                     for j in range(pps) for i in range(pps)])
    nearest = np.argmin(((grid - centre) ** 2).sum(1))
    assert a.grid_index[0] == nearest
    np.testing.assert_allclose(a.points[0], grid[nearest], atol=1e-4)
    x, y = a.points[0]
    assert mask[int(y), int(x)], "the chosen grid point lies on the object"


def test_identical_object_elsewhere_does_not_take_the_prompt():
    hw = (96, 128)
    mask = np.zeros(hw, bool)
    mask[10:60, 10:60] = True
    cells = _cells_of(mask)
    feats = _features(cells, cells[0], decoy=(10, 14))  # the decoy is more similar than any cell
    a = assign_nearest(feats, torch.from_numpy(mask)[None], IMG_SIZE, 16)
    x, y = a.points[0]
    assert mask[int(y), int(x)]


def test_reference_assignment_takes_the_image_wide_arg_max_and_nearest_grid_point():
    """The reference code's choice (evaluation's prompted-reference): the decoy off the object
    wins, and the prompt is the grid point nearest the decoy's cell centre, off the mask."""
    hw = (96, 128)
    mask = np.zeros(hw, bool)
    mask[10:60, 10:60] = True
    decoy = (10, 14)  # row, column of an embedding cell outside the mask
    feats = _features(_cells_of(mask), _cells_of(mask)[0], decoy)
    a = assign_nearest(feats, torch.from_numpy(mask)[None], IMG_SIZE, 16, on_object=False)
    rh, rw = resized_hw(hw, IMG_SIZE)
    cell_px = IMG_SIZE / GRID
    centre = np.array([(decoy[1] + 0.5) * cell_px * hw[1] / rw,
                       (decoy[0] + 0.5) * cell_px * hw[0] / rh])
    grid = grid_points(16, hw)
    assert a.grid_index[0] == np.argmin(((grid - centre) ** 2).sum(1))
    x, y = a.points[0]
    assert not mask[int(y), int(x)]


def test_grid_is_the_everything_mode_grid_in_the_image_frame():
    """The points everything mode prompts, mapped to the model frame, are our grid's points."""
    hw = (96, 128)
    frame = Frame(torch.zeros(1, 64, 16, 16), hw, resized_hw(hw, IMG_SIZE), IMG_SIZE, 16)
    ours = to_model_frame(grid_points(8, hw), hw, IMG_SIZE)
    theirs = frame.to_input(prompts.grid_points(8, hw)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_prompt_in_model_frame_lies_on_the_mask_in_the_model_frame():
    """Frames agree for a non-square image: the model-frame prompt hits the resized mask."""
    hw = (90, 160)
    mask = np.zeros(hw, bool)
    mask[50:80, 100:150] = True
    cells = _cells_of(mask)
    a = assign_nearest(_features(cells, cells[-1]), torch.from_numpy(mask)[None], IMG_SIZE, 16)
    xm, ym = to_model_frame(a.points, hw, IMG_SIZE)[0]
    model_mask = mask_coverage(torch.from_numpy(mask)[None], hw, IMG_SIZE, IMG_SIZE)[0] >= 0.5
    assert model_mask[int(ym), int(xm)]


def test_masks_that_vanish_on_the_embedding_grid_are_dropped():
    hw = (128, 128)
    masks = np.zeros((3, *hw), bool)
    masks[0, 10:50, 10:50] = True
    masks[1, 70, 70] = True  # one pixel: a sliver of one cell
    masks[2, 60:120, 60:120] = True
    feats = torch.randn(C, GRID, GRID, generator=torch.Generator().manual_seed(0))
    a = assign_nearest(feats, torch.from_numpy(masks), IMG_SIZE, 16)
    assert a.keep.tolist() == [0, 2]
    for k, (x, y) in zip(a.keep, a.points):
        assert masks[k, int(y), int(x)]


def test_random_prompts_train_the_masks_the_nearest_assignment_keeps():
    """The random-prompt ablation differs from the SAOM assignment in the prompt only: masks
    that vanish on the embedding grid are dropped by both."""
    hw = (128, 128)
    masks = np.zeros((4, *hw), bool)
    masks[0, 10:50, 10:50] = True
    masks[1, 70, 70] = True  # one pixel
    masks[2, 60:120, 60:120] = True
    masks[3, 20:100, 100:103] = True  # a thin line: under half of every cell it crosses
    feats = torch.randn(C, GRID, GRID, generator=torch.Generator().manual_seed(0))
    # the 3-pixel line covers 3 / 8 of each cell it crosses
    for min_coverage, kept in ((0.5, [0, 2]), (0.2, [0, 2, 3])):
        near = assign_nearest(feats, torch.from_numpy(masks), IMG_SIZE, 16, min_coverage)
        rand = assign_random(torch.from_numpy(masks), np.random.default_rng(0), IMG_SIZE, GRID,
                             min_coverage)
        assert rand.keep.tolist() == near.keep.tolist() == kept


def test_coverage_is_the_covered_fraction_of_each_cell():
    # a square image: 16 x 16 pixel cells; a mask filling exactly one cell, and half of one
    mask = torch.zeros(2, 256, 256, dtype=torch.bool)
    mask[0, 32:48, 48:64] = True
    mask[1, 32:48, 48:56] = True
    cov = mask_coverage(mask, (256, 256), IMG_SIZE, GRID)
    expected = torch.zeros(2, GRID, GRID)
    expected[0, 2, 3], expected[1, 2, 3] = 1.0, 0.5
    torch.testing.assert_close(cov, expected, atol=1e-6, rtol=0)
    # 50 x 70: cells of 70 / 16 = 4.375 image pixels across (rows 50 / 183 * 16), so pixels
    # straddle cell edges; a 7 x 7 corner covers cell (0, 0), 0.6 of (0, 1), 0.6 x 0.6 of (1, 1)
    hw = (50, 70)
    rh, rw = resized_hw(hw, IMG_SIZE)
    ey, ex = 16 * hw[0] / rh, 16 * hw[1] / rw
    mask = torch.zeros(1, *hw, dtype=torch.bool)
    mask[0, :7, :7] = True
    cov = mask_coverage(mask, hw, IMG_SIZE, GRID)[0]
    fy, fx = (7 - ey) / ey, (7 - ex) / ex
    torch.testing.assert_close(cov[:2, :2], torch.tensor([[1.0, fx], [fy, fy * fx]]),
                               atol=1e-5, rtol=0)
    assert cov[2:].sum() == 0 and cov[:, 2:].sum() == 0
    # any mask: coverage x cell area adds up to the mask's pixels; padding is never covered
    rng = np.random.default_rng(0)
    for hw in [(50, 70), (96, 128), (33, 250), (300, 41)]:
        masks = torch.from_numpy(rng.random((3, *hw)) < 0.3)
        rh, rw = resized_hw(hw, IMG_SIZE)
        for out in (GRID, 64, IMG_SIZE):
            cov = mask_coverage(masks, hw, IMG_SIZE, out)
            cell_area = (IMG_SIZE / out) ** 2 * hw[0] / rh * hw[1] / rw
            torch.testing.assert_close(cov.double().sum((1, 2)) * cell_area,
                                       masks.sum((1, 2)).double(), atol=1e-3, rtol=1e-6)
        full = mask_coverage(torch.ones(1, *hw, dtype=torch.bool), hw, IMG_SIZE, IMG_SIZE)[0]
        assert (full[:rh, :rw] == 1).all() and full[rh:].sum() == 0 and full[:, rw:].sum() == 0


def test_no_masks():
    a = assign_nearest(torch.randn(C, GRID, GRID), torch.zeros(0, 64, 64, dtype=torch.bool),
                       IMG_SIZE, 8)
    assert len(a.keep) == 0 and a.points.shape == (0, 2)


def test_random_prompts_lie_inside_their_masks_and_are_reproducible():
    masks = np.zeros((3, 50, 70), bool)
    masks[0, 5:9, 5:60] = True
    masks[2, 30:48, 40:46] = True
    a = assign_random(torch.from_numpy(masks), np.random.default_rng(3), IMG_SIZE, GRID)
    b = assign_random(torch.from_numpy(masks), np.random.default_rng(3), IMG_SIZE, GRID)
    assert a.keep.tolist() == [0, 2]
    np.testing.assert_array_equal(a.points, b.points)
    for k, (x, y) in zip(a.keep, a.points):
        assert masks[k, int(y), int(x)]


def _two_objects() -> tuple[np.ndarray, torch.Tensor]:
    """A large object covering many grid points and a small one covering one or two."""
    masks = np.zeros((2, 128, 128), bool)
    masks[0, 8:120, 8:72] = True
    masks[1, 88:104, 96:104] = True
    feats = torch.randn(C, GRID, GRID, generator=torch.Generator().manual_seed(1))
    return masks, feats


def test_interior_points_lie_on_their_mask_after_the_nearest_prompts():
    masks, feats = _two_objects()
    base = assign_nearest(feats, torch.from_numpy(masks), IMG_SIZE, 16)
    a = add_interior_points(base, torch.from_numpy(masks), 16, 6, np.random.default_rng(0))
    n = len(base.keep)
    np.testing.assert_array_equal(a.keep[:n], base.keep)
    np.testing.assert_array_equal(a.grid_index[:n], base.grid_index)
    np.testing.assert_allclose(a.points, grid_points(16, (128, 128))[a.grid_index])
    assert np.bincount(a.keep).tolist() == [6, 2]  # the small object holds just 2 grid points
    for k in (0, 1):
        assert len(set(a.grid_index[a.keep == k].tolist())) == np.sum(a.keep == k)  # distinct
    for k, (x, y) in zip(a.keep, a.points):
        assert masks[k, int(y), int(x)]


def test_interior_points_prefer_the_interior_and_are_reproducible():
    masks, feats = _two_objects()
    t = torch.from_numpy(masks[:1])
    base = assign_nearest(feats, t, IMG_SIZE, 16)
    draws = [add_interior_points(base, t, 16, 4, np.random.default_rng(s)) for s in range(200)]
    np.testing.assert_array_equal(
        draws[0].grid_index,
        add_interior_points(base, t, 16, 4, np.random.default_rng(0)).grid_index)
    extra = np.concatenate([d.points[1:] for d in draws])
    # distance to the mask's nearest edge (x 8..71, y 8..119); grid points are 8 px apart
    edge = np.minimum.reduce([extra[:, 0] - 8, 72 - extra[:, 0], extra[:, 1] - 8,
                              120 - extra[:, 1]])
    candidates = grid_points(16, (128, 128))
    on = masks[0][candidates[:, 1].astype(int), candidates[:, 0].astype(int)]
    c = candidates[on]
    uniform_edge = np.minimum.reduce([c[:, 0] - 8, 72 - c[:, 0], c[:, 1] - 8, 120 - c[:, 1]])
    assert edge.mean() > 1.2 * uniform_edge.mean()
