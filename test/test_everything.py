"""Tests for saom_ros.everything: input checks, result semantics, parity with SAM's generator."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from saom_ros.everything import EverythingEngine, EverythingSettings, Instances, make_point_grid
from saom_ros.model import ModelConfig, Saom, build_saom

from conftest import BENCH


def _scene(h: int, w: int, seed: int = 3) -> np.ndarray:
    return BENCH.synthetic_scene(h, w, seed)[0]


# Thresholds under which the quickly trained tiny model keeps a few dozen masks.
PARITY = dict(pred_iou_thresh=0.25, stability_score_thresh=0.5)
LOOSE = dict(PARITY, points_per_side=16)


@pytest.mark.parametrize("image, expected", [
    (np.zeros((10, 10), np.uint8), "HxWx3"),
    (np.zeros((10, 10, 4), np.uint8), "HxWx3"),
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((0, 10, 3), np.uint8), "non-empty"),
    (np.zeros((300, 300, 3), np.uint8), "at most 40000 pixels"),
    ([[0, 0, 0]], "numpy uint8 array"),
])
def test_bad_input_raises_value_error(tiny_model: Saom, image: object, expected: str) -> None:
    engine = EverythingEngine(tiny_model, EverythingSettings(max_image_pixels=40_000))
    with pytest.raises(ValueError, match=expected):
        engine(image)


@pytest.mark.parametrize("hw", [(1000, 1), (1, 1000), (4000, 3)])
def test_extremely_thin_images_are_segmented(tiny_model: Saom, hw: tuple) -> None:
    engine = EverythingEngine(tiny_model, EverythingSettings(
        points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0))
    result = engine(np.full((*hw, 3), 90, np.uint8))
    assert result.instance_image.shape == result.semantic_image.shape == hw
    assert result.masks.shape[1:] == hw


def test_point_grid_is_segment_anythings() -> None:
    grid = make_point_grid(4)
    assert grid.shape == (16, 2)
    np.testing.assert_allclose(grid[:4, 0], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(grid[::4, 1], [0.125, 0.375, 0.625, 0.875])


def _check_label_images(inst: Instances) -> None:
    """Each pixel goes to the best-scoring (first) mask covering it; semantic = its class."""
    expected = np.zeros(inst.instance_image.shape, np.uint16)
    for i in reversed(range(len(inst))):
        expected[inst.masks[i]] = i + 1
    np.testing.assert_array_equal(inst.instance_image, expected)
    lut = np.concatenate([[0], inst.class_ids]).astype(np.uint16)
    np.testing.assert_array_equal(inst.semantic_image, lut[inst.instance_image])


def test_instances_at_original_resolution_non_square(shapes_model: Saom) -> None:
    engine = EverythingEngine(shapes_model, EverythingSettings(**LOOSE))
    inst = engine(_scene(150, 230))
    assert len(inst) > 3
    assert inst.masks.shape == (len(inst), 150, 230) and inst.masks.dtype == bool
    assert inst.instance_image.shape == (150, 230) and inst.instance_image.dtype == np.uint16
    assert inst.semantic_image.dtype == np.uint16
    assert np.all(np.diff(inst.predicted_iou) <= 0)  # sorted by descending score
    assert inst.class_ids.dtype == np.int32
    assert np.all((inst.class_ids >= 1) & (inst.class_ids <= 55))
    assert np.all((inst.class_scores > 0) & (inst.class_scores <= 1))
    for mask, box in zip(inst.masks, inst.boxes):  # inclusive pixel extents of each mask
        ys, xs = np.nonzero(mask)
        np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max(), ys.max()])
    _check_label_images(inst)
    assert np.any(np.bincount(inst.instance_image.ravel()) > 0)


def test_class_agnostic_model_gives_class_one_scored_by_iou(shapes_model: Saom) -> None:
    agnostic = build_saom(ModelConfig.preset("tiny"))
    agnostic.sam.load_state_dict(shapes_model.sam.state_dict())
    inst = EverythingEngine(agnostic, EverythingSettings(**LOOSE))(_scene(128, 128))
    assert len(inst) > 0
    assert np.all(inst.class_ids == 1)
    np.testing.assert_array_equal(inst.class_scores, inst.predicted_iou)


def test_settings_replaced_between_calls(shapes_model: Saom) -> None:
    engine = EverythingEngine(shapes_model, EverythingSettings(**LOOSE))
    image = _scene(128, 160)
    many = engine(image)
    engine.settings = dataclasses.replace(engine.settings, max_instances=2)
    two = engine(image)
    assert len(many) > 2 and len(two) == 2
    np.testing.assert_array_equal(two.masks, many.masks[:2])
    engine.settings = dataclasses.replace(engine.settings, pred_iou_thresh=1.5, max_instances=0)
    none = engine(image)
    assert len(none) == 0 and not none.instance_image.any() and none.masks.shape == (0, 128, 160)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, {"min_mask_region_area": 30}])
def test_parity_with_sam_automatic_mask_generator(shapes_model: Saom, extra: dict) -> None:
    settings = EverythingSettings(**PARITY, **extra)
    image = _scene(192, 256, seed=7)
    ours = EverythingEngine(shapes_model, settings)(image)
    ref = BENCH.amg_masks(shapes_model, settings, image)
    assert len(ref) >= 15 and abs(len(ours) - len(ref)) <= 2
    # Every mask of the smaller set has a partner of IoU >= 0.98 in the other.
    assert BENCH.matched_iou(ours.masks, ref) >= 0.98


@pytest.mark.slow
def test_compiled_engine_gives_the_same_instances(shapes_model: Saom) -> None:
    image = _scene(128, 160)
    plain = EverythingEngine(shapes_model, EverythingSettings(**LOOSE))(image)
    compiled = EverythingEngine(shapes_model, EverythingSettings(**LOOSE, compile=True))(image)
    assert len(plain) > 3 and len(compiled) == len(plain)
    assert BENCH.matched_iou(compiled.masks, plain.masks) >= 0.99
    np.testing.assert_allclose(compiled.predicted_iou, plain.predicted_iou, atol=1e-4)
