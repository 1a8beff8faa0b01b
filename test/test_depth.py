"""saom_ros.depth against hand-computed values: units, resizing, intrinsics, robust 3D boxes."""
import numpy as np
import pytest

from saom_ros.depth import DepthError, Intrinsics, boxes_3d, depth_in_metres, match_size

K = Intrinsics(fx=100.0, fy=200.0, cx=4.0, cy=2.0)
# README, "Flying pixels": Tukey's fences [Q1 - 1.5 IQR, Q3 + 1.5 IQR], quartiles of 256 evenly
# spaced pixels of the instance, widened to at least the median +- 5 cm.
FENCE, FENCE_SAMPLES, MIN_BAND_M = 1.5, 256, 0.05


def test_units_and_invalid_values():
    mm = np.array([[0, 1000, 65535]], np.uint16)
    np.testing.assert_allclose(depth_in_metres(mm, "16UC1"), [[np.nan, 1.0, 65.535]], rtol=1e-6)
    m = np.array([[0.0, np.nan, np.inf, -1.0, 2.5]], np.float32)
    np.testing.assert_array_equal(depth_in_metres(m, "32FC1"),
                                  np.array([[np.nan] * 4 + [2.5]], np.float32))
    with pytest.raises(DepthError, match="unsupported depth encoding 'rgb8'"):
        depth_in_metres(mm, "rgb8")


def test_match_size_nearest_neighbour_same_aspect_only():
    depth = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert match_size(depth, (2, 3)) is depth
    doubled = np.repeat(np.repeat(depth, 2, 0), 2, 1)
    np.testing.assert_array_equal(match_size(depth, (4, 6)), doubled)
    np.testing.assert_array_equal(match_size(doubled, (2, 3)), depth)
    with pytest.raises(DepthError, match="not the same aspect ratio"):
        match_size(depth, (3, 3))


def test_match_size_takes_the_pixel_under_each_output_pixels_centre():
    # A third of the size: each output pixel covers 3x3 input pixels and takes the middle one.
    depth = np.arange(54, dtype=np.float32).reshape(6, 9)
    np.testing.assert_array_equal(match_size(depth, (2, 3)), depth[[1, 4]][:, [1, 4, 7]])
    # 4/3 of the size: output centres (i + 0.5) * 3/4 = 0.375, 1.125, 1.875, 2.625 input pixels.
    depth = np.arange(18, dtype=np.float32).reshape(3, 6)
    np.testing.assert_array_equal(match_size(depth, (4, 8)),
                                  depth[[0, 1, 1, 2]][:, [0, 1, 1, 2, 3, 4, 4, 5]])


def test_intrinsics_from_camera_info():
    k = [100.0, 0, 4.0, 0, 200.0, 2.0, 0, 0, 1]
    assert Intrinsics.from_camera_info(k, (0, 0), (5, 9)) == K
    assert Intrinsics.from_camera_info(k, (5, 9), (5, 9)) == K
    # Half the resolution: focal lengths halve, centres move with pixel edges (4.5 / 2 - 0.5).
    assert Intrinsics.from_camera_info(k, (10, 20), (5, 10)) == Intrinsics(50.0, 100.0, 1.75, 0.75)
    with pytest.raises(DepthError, match="must be at least 1.0 pixel"):
        Intrinsics.from_camera_info([0.0] * 9, (0, 0), (5, 9))
    with pytest.raises(DepthError, match="must be at least"):  # denormal: infinite rays
        Intrinsics.from_camera_info([1e-300, 0, 4.0, 0, 1e-300, 2.0, 0, 0, 1], (0, 0), (5, 9))
    with pytest.raises(DepthError, match="9 finite numbers"):
        Intrinsics.from_camera_info(k[:8], (0, 0), (5, 9))
    with pytest.raises(DepthError, match="aspect ratio"):
        Intrinsics.from_camera_info(k, (10, 10), (5, 9))


def test_intrinsics_of_a_region_of_interest_and_binning():
    k = [100.0, 0, 40.0, 0, 200.0, 30.0, 0, 0, 1]
    # A 20x10 window at (12, 8): same focal lengths, the centre moves by the offset.
    assert Intrinsics.from_camera_info(k, (60, 80), (10, 20), roi=(12, 8, 20, 10)) == \
        Intrinsics(100.0, 200.0, 28.0, 22.0)
    # Binned 2x2: as half the resolution (about pixel edges).
    assert Intrinsics.from_camera_info(k, (60, 80), (30, 40), binning=(2, 2)) == \
        Intrinsics(50.0, 100.0, 19.75, 14.75)
    # The window binned, then delivered at half its binned size again.
    assert Intrinsics.from_camera_info(k, (60, 80), (5, 10), (2, 2), (12, 8, 40, 20)) == \
        Intrinsics(25.0, 50.0, (28.0 + 0.5) / 4 - 0.5, (22.0 + 0.5) / 4 - 0.5)
    # Binning 0 means none, as CameraInfo has it.
    assert Intrinsics.from_camera_info(k, (60, 80), (60, 80), binning=(0, 0)) == \
        Intrinsics(100.0, 200.0, 40.0, 30.0)


def test_box_of_a_plane_by_hand():
    labels = np.zeros((5, 9), np.uint16)
    labels[1:3, 2:7] = 3  # columns 2..6, rows 1..2
    depth = np.full((5, 9), 2.0, np.float32)
    boxes = boxes_3d(labels, depth, K, with_points=True)
    assert boxes.labels.tolist() == [3]
    # x = (u - 4) * 2 / 100 for u = 2..6; y = (v - 2) * 2 / 200 for v = 1..2; z = 2.
    np.testing.assert_allclose(boxes.centers[0], [0.0, -0.005, 2.0], atol=1e-6)
    np.testing.assert_allclose(boxes.sizes[0], [0.08, 0.01, 0.0], atol=1e-6)
    assert boxes.points.shape == (10, 3) and boxes.point_labels.tolist() == [3] * 10
    np.testing.assert_allclose(sorted(boxes.points[:, 0]),
                               sorted([(u - 4) * 0.02 for u in range(2, 7)] * 2), atol=1e-6)


def test_invalid_depth_is_skipped_and_labels_without_depth_are_left_out():
    labels = np.zeros((5, 9), np.uint16)
    labels[0:2, 0:3] = 1
    labels[3:5, 5:9] = 2
    depth = np.full((5, 9), np.nan, np.float32)
    depth[0, 0:2] = 1.0  # label 1 has two valid pixels, (0,0) and (1,0) in (u,v)
    boxes = boxes_3d(labels, depth, K, with_points=True)
    assert boxes.labels.tolist() == [1]
    np.testing.assert_allclose(boxes.centers[0], [(-4 - 3) / 2 / 100, -2 / 200, 1.0], atol=1e-6)
    assert len(boxes_3d(np.zeros((5, 9), np.uint16), depth, K)) == 0


def test_flying_pixels_at_the_silhouette_are_cut():
    # An object at 1.0-1.04 m in front of a wall at 3 m; its mask's border pixels carry
    # interpolated ("flying") depths and the wall's depth.
    labels = np.zeros((20, 20), np.uint16)
    labels[5:15, 5:15] = 1
    depth = np.full((20, 20), 3.0, np.float32)
    depth[5:15, 5:15] = 1.0 + np.linspace(0, 0.04, 10, dtype=np.float32)[None, :]
    depth[5, 5:15] = 2.0  # flying pixels
    depth[14, 5:10] = 3.0  # background under the mask
    boxes = boxes_3d(labels, depth, Intrinsics(100.0, 100.0, 10.0, 10.0), with_points=True)
    z_low = boxes.centers[0, 2] - boxes.sizes[0, 2] / 2
    z_high = boxes.centers[0, 2] + boxes.sizes[0, 2] / 2
    assert z_low == pytest.approx(1.0, abs=1e-6) and z_high == pytest.approx(1.04, abs=1e-6)
    assert np.all(boxes.points[:, 2] < 1.05)


def test_fences_are_one_and_a_half_interquartile_ranges_beyond_the_quartiles():
    # 256 pixels, so the quartiles are of all of them: Q1 = 1.0, Q3 = 1.2 (IQR 0.2), median 1.2;
    # the fences are [0.7, 1.5]. 0.6 and 1.6 lie between 1.5 and 3 IQR beyond the quartiles.
    labels = np.ones((16, 16), np.uint16)
    depth = np.where(np.arange(256) < 128, 1.0, 1.2).astype(np.float32).reshape(16, 16)
    depth.flat[0], depth.flat[200], depth.flat[255] = 0.6, 1.45, 1.6
    boxes = boxes_3d(labels, depth, Intrinsics(50.0, 50.0, 8.0, 8.0), with_points=True)
    assert len(boxes.points) == 254
    assert sorted(set(boxes.points[:, 2].tolist())) == pytest.approx([1.0, 1.2, 1.45])
    z = boxes.centers[0, 2] + np.array([-0.5, 0.5]) * boxes.sizes[0, 2]
    np.testing.assert_allclose(z, [1.0, 1.45], atol=1e-6)


def test_a_slanted_surface_keeps_its_whole_depth_range():
    # Depth rising uniformly from 1 to 3 m across the object: no point is an outlier.
    labels = np.ones((10, 50), np.uint16)
    depth = np.broadcast_to(np.linspace(1.0, 3.0, 50, dtype=np.float32), (10, 50)).copy()
    boxes = boxes_3d(labels, depth, Intrinsics(50.0, 50.0, 25.0, 5.0), with_points=True)
    assert len(boxes.points) == 500
    assert boxes.sizes[0, 2] == pytest.approx(2.0, abs=1e-6)


def test_noise_within_the_minimum_band_is_kept():
    labels = np.ones((4, 4), np.uint16)
    depth = np.full((4, 4), 2.0, np.float32)
    depth[0, 0] = 2.0 + MIN_BAND_M * 0.9  # a constant plane's IQR is 0; the band still keeps this
    depth[3, 3] = 2.0 + MIN_BAND_M * 1.1
    boxes = boxes_3d(labels, depth, K, with_points=True)
    assert len(boxes.points) == 15
    assert boxes.sizes[0, 2] == pytest.approx(MIN_BAND_M * 0.9, abs=1e-6)


def test_each_label_boxes_only_its_own_pixels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, (30, 40)).astype(np.uint16)
    depth = np.full((30, 40), 1.5, np.float32)
    intr = Intrinsics(60.0, 60.0, 19.5, 14.5)
    boxes = boxes_3d(labels, depth, intr, with_points=True)
    assert boxes.labels.tolist() == [1, 2, 3, 4, 5]
    for label, center, size in zip(boxes.labels, boxes.centers, boxes.sizes):
        v, u = np.nonzero(labels == label)
        x, y = (u - intr.cx) * 1.5 / intr.fx, (v - intr.cy) * 1.5 / intr.fy
        np.testing.assert_allclose(center[:2], [(x.min() + x.max()) / 2, (y.min() + y.max()) / 2],
                                   atol=1e-5)
        np.testing.assert_allclose(size[:2], [x.max() - x.min(), y.max() - y.min()], atol=1e-5)
        assert (boxes.point_labels == label).sum() == len(u)


def test_size_mismatch_is_an_error():
    with pytest.raises(DepthError, match="differ in size"):
        boxes_3d(np.zeros((2, 2), np.uint16), np.zeros((3, 3), np.float32), K)


def test_points_only_when_asked_for_and_the_same_boxes_either_way():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (12, 16)).astype(np.uint16)
    depth = rng.uniform(0.5, 3.0, (12, 16)).astype(np.float32)
    depth[rng.random((12, 16)) < 0.2] = np.nan
    without, with_points = boxes_3d(labels, depth, K), boxes_3d(labels, depth, K, with_points=True)
    assert len(without.points) == len(without.point_labels) == 0
    np.testing.assert_array_equal(without.centers, with_points.centers)
    np.testing.assert_array_equal(without.sizes, with_points.sizes)
    for label, low, high in zip(with_points.labels, with_points.centers - with_points.sizes / 2,
                                with_points.centers + with_points.sizes / 2):
        mine = with_points.points[with_points.point_labels == label]
        np.testing.assert_allclose(mine.min(axis=0), low, atol=1e-6)
        np.testing.assert_allclose(mine.max(axis=0), high, atol=1e-6)


def _reference_boxes(labels, depth, intr):
    """The documented rule, one label at a time: row-major valid pixels, quartiles of
    FENCE_SAMPLES evenly spaced ones, fences, min/max of the kept back-projected points."""
    out = {}
    v, u = np.mgrid[:labels.shape[0], :labels.shape[1]]
    for label in np.unique(labels[labels > 0]):
        sel = (labels == label) & (depth > 0)
        z = depth[sel]
        if not len(z):
            continue
        s = np.sort(z[np.arange(FENCE_SAMPLES) * len(z) // FENCE_SAMPLES])
        q1, med, q3 = (s[FENCE_SAMPLES * k // 4] for k in (1, 2, 3))
        low = min(q1 - FENCE * (q3 - q1), med - MIN_BAND_M)
        high = max(q3 + FENCE * (q3 - q1), med + MIN_BAND_M)
        keep = (z >= low) & (z <= high)
        z = z[keep]
        x = np.float32((u[sel][keep] - intr.cx) / intr.fx) * z
        y = np.float32((v[sel][keep] - intr.cy) / intr.fy) * z
        pts = np.stack([x, y, z], axis=1).astype(np.float64)
        out[int(label)] = (pts.min(axis=0), pts.max(axis=0))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_boxes_equal_the_rule_applied_label_by_label(seed):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 8, (8, 10))
    labels = np.kron(blocks, np.ones((5, 6), int))[:37, :53].astype(np.uint16)
    depth = rng.uniform(0.5, 3.0, labels.shape).astype(np.float32)
    depth[rng.random(labels.shape) < 0.1] = np.nan
    depth[rng.random(labels.shape) < 0.05] = 9.0  # outliers for the fences to cut
    # ... and ones 1.5 to 3 IQR (~1.25 m for uniform depths) above the third quartile (~2.4 m)
    depth[rng.random(labels.shape) < 0.05] = 5.0
    intr = Intrinsics(40.0, 45.0, 26.0, 18.0)
    boxes = boxes_3d(labels, depth, intr)
    expected = _reference_boxes(labels, depth, intr)
    assert boxes.labels.tolist() == sorted(expected)
    for label, center, size in zip(boxes.labels.tolist(), boxes.centers, boxes.sizes):
        low, high = expected[label]
        np.testing.assert_allclose(center, (low + high) / 2, atol=1e-6)
        np.testing.assert_allclose(size, high - low, atol=1e-6)


def test_every_16bit_value_converts_as_a_float32_division():
    mm = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    metres = depth_in_metres(mm, "16UC1")
    assert metres.dtype == np.float32 and np.isnan(metres[0, 0])
    expected = mm.astype(np.float32) / np.float32(1000.0)
    assert np.array_equal(metres.ravel()[1:], expected.ravel()[1:])
    assert np.array_equal(depth_in_metres(mm.astype(">u2"), "16UC1"), metres, equal_nan=True)


def test_boxes_from_stored_millimetres_equal_boxes_from_metres():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, (24, 32)).astype(np.uint16)
    mm = rng.integers(300, 5000, labels.shape).astype(np.uint16)
    mm[rng.random(labels.shape) < 0.1] = 0
    from_mm = boxes_3d(labels, mm, K, with_points=True, encoding="16UC1")
    from_m = boxes_3d(labels, depth_in_metres(mm, "16UC1"), K, with_points=True)
    for field in ("labels", "centers", "sizes", "points", "point_labels"):
        np.testing.assert_array_equal(getattr(from_mm, field), getattr(from_m, field))
    metres = np.full(labels.shape, 2.0, np.float32)
    metres[0] = np.inf  # invalid as stored in 32FC1
    assert boxes_3d(labels, metres, K).sizes[:, 2].max() == 0.0
    with pytest.raises(DepthError, match="unsupported depth encoding 'mono8'"):
        boxes_3d(labels, mm, K, encoding="mono8")
