"""coco_masks: a mask as a COCO annotation, decoding a segmentation, and telling why one would
not decode without drawing it."""
from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils

from saom_ros.training.coco_masks import (decode_segmentation, mask_to_annotation,
                                          segmentation_problem)


def test_mask_to_annotation_round_trip():
    mask = np.zeros((30, 40), bool)
    mask[5:9, 10:25] = True
    mask[20, 39] = True
    ann = mask_to_annotation(mask, 3, 4, 5, object_id="Mug|1")
    assert json.loads(json.dumps(ann)) == ann  # plain JSON
    assert (ann["id"], ann["image_id"], ann["category_id"], ann["iscrowd"]) == (3, 4, 5, 0)
    assert ann["object_id"] == "Mug|1" and ann["area"] == 61
    assert ann["bbox"] == [10.0, 5.0, 30.0, 16.0]
    np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), mask)


def test_every_rle_pycocotools_writes_passes_and_a_cut_one_does_not():
    rng = np.random.default_rng(5)
    h, w = 90, 140
    for _ in range(30):
        mask = np.zeros((h, w), bool)
        for _ in range(rng.integers(0, 5)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            mask[y:y + rng.integers(1, h), x:x + rng.integers(1, w)] = True
        seg = mask_to_annotation(mask ^ (rng.random((h, w)) < 0.01), 1, 1, 1)["segmentation"]
        assert segmentation_problem(seg, h, w) is None
        np.testing.assert_array_equal(decode_segmentation(seg, h, w),
                                      mask_utils.decode(seg).astype(bool))
        cut = dict(seg, counts=seg["counts"][:-1])
        assert segmentation_problem(cut, h, w) is not None


def test_polygons_decode_and_short_ones_are_problems():
    square = [[2, 2, 8, 2, 8, 8, 2, 8]]
    assert segmentation_problem(square, 10, 10) is None
    assert decode_segmentation(square, 10, 10)[3:7, 3:7].all()
    assert "at least 6" in segmentation_problem([[1, 2, 3, 4]], 10, 10)
