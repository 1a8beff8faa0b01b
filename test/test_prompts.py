"""Tests for saom_ros.prompts: the grid, its interleaved sub-grids, points inside masks."""
from __future__ import annotations

import numpy as np
from segment_anything.utils.amg import build_point_grid

from saom_ros.prompts import DEPTH_SIDE, covered, grid_phase, grid_points, inside_points


def test_grid_points_are_the_generators_grid_in_pixels() -> None:
    pts = grid_points(4, (100, 200))
    np.testing.assert_allclose(pts, build_point_grid(4) * [200, 100])


def test_grid_phases_partition_the_grid() -> None:
    phases = np.stack([grid_phase(6, 2, k) for k in range(4)])
    assert np.all(phases.sum(0) == 1)  # every point in exactly one phase
    assert np.array_equal(grid_phase(6, 2, 5), phases[1])  # phases cycle
    rows, cols = np.divmod(np.flatnonzero(phases[3]), 6)
    assert np.all(rows % 2 == 1) and np.all(cols % 2 == 1)


def test_covered_reads_the_pixel_of_each_point() -> None:
    coverage = np.zeros((10, 20), bool)
    coverage[2, 15] = True
    pts = np.array([[15.5, 2.5], [15.5, 3.5], [-4.0, 40.0]], np.float32)
    assert covered(pts, coverage).tolist() == [True, False, False]
    assert covered(np.zeros((0, 2), np.float32), coverage).shape == (0,)


def test_inside_points_are_deep_inside_their_masks() -> None:
    masks = np.zeros((3, 40, 60), bool)
    masks[0, 5:35, 5:25] = True  # a 30x20 box: its middle
    masks[1, :, 50:] = True  # cut by the image edge: the point stays inside
    points, owner = inside_points(masks, per_mask=2)
    assert owner.tolist() == [0, 0, 1, 1]  # the empty mask gets none
    for (x, y), k in zip(points, owner):
        assert masks[k, int(y), int(x)]
    assert abs(points[0, 0] - 15) <= 1 and 10 <= points[0, 1] <= 30
    assert np.hypot(*(points[1] - points[0])) >= 9  # the second is outside the first's disc


def test_inside_points_read_only_the_given_boxes() -> None:
    masks = np.zeros((3, 40, 60), bool)
    masks[0, 5:35, 5:25] = True
    masks[1, 12:20, 40:58] = True
    boxes = np.array([[5, 5, 24, 34], [40, 12, 57, 19], [0, 0, 0, 0]], np.float32)
    points, owner = inside_points(masks, 2, boxes)
    expected = inside_points(masks, 2)
    np.testing.assert_array_equal(points, expected[0])
    np.testing.assert_array_equal(owner, expected[1])
    # Only the box is read: what lies outside it does not move the point.
    masks[1, :, :12] = True
    np.testing.assert_array_equal(inside_points(masks, 2, boxes)[0], points)


def test_inside_points_search_only_the_masks_asked_for() -> None:
    masks = np.zeros((3, 40, 60), bool)
    masks[0, 5:35, 5:25] = True
    masks[1, 12:20, 40:58] = True
    masks[2, 25:38, 30:50] = True
    everywhere, owners = inside_points(masks, 1)
    points, owner = inside_points(masks, 1, which=np.array([2, 0]))
    # The same points as when every mask is searched, in the order asked, with the masks' own
    # indices.
    np.testing.assert_array_equal(owner, [2, 0])
    np.testing.assert_array_equal(points, everywhere[[2, 0]])
    assert len(inside_points(masks, 1, which=np.zeros(0, np.int64))[0]) == 0


def test_inside_points_of_large_masks_come_from_whole_blocks() -> None:
    masks = np.zeros((3, 400, 500), bool)
    masks[0, 50:350, 100:301] = True  # box sides above DEPTH_SIDE: searched on blocks
    masks[1, 10:12, 20:420] = True  # too thin for a whole block: searched pixel by pixel
    masks[2, 390:, 450:] = True  # 10x50: at full resolution
    points, owner = inside_points(masks, per_mask=2)
    assert owner.tolist() == [0, 0, 1, 2, 2]
    for (x, y), k in zip(points, owner):
        assert masks[k, int(y), int(x)]
    block = -(-300 // DEPTH_SIDE)
    assert abs(points[0, 0] - 200.5) <= block and abs(points[0, 1] - 200) <= 50 + block
    assert np.hypot(*(points[1] - points[0])) >= 99  # outside the first's disc (~100 px)
    assert 10 <= points[2, 1] < 12
