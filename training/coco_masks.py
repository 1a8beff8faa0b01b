"""COCO instance masks: a mask as an annotation (compressed RLE), a segmentation decoded to a
mask, and why a segmentation would not decode, found without drawing it."""
from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_utils


def mask_to_annotation(mask: np.ndarray, annotation_id: int, image_id: int, category_id: int,
                       **extra: Any) -> dict:
    """COCO annotation of one binary mask: compressed RLE (counts as str), bbox [x, y, w, h],
    area in pixels, iscrowd 0. ``extra`` adds fields (e.g. ``object_id``)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": int(annotation_id),
        "image_id": int(image_id),
        "category_id": int(category_id),
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
        **extra,
    }


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool [H, W] mask of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why a COCO segmentation would not decode to a ``height`` x ``width`` mask, or None.

    Checks its structure and run lengths without drawing it (drawing every mask would make
    indexing cost as much as an epoch of mask decoding)."""
    if isinstance(segmentation, list):
        return _polygons_problem(segmentation)
    if not isinstance(segmentation, dict):
        return f"segmentation is {segmentation!r:.40}, neither polygons nor RLE"
    counts = segmentation.get("counts")
    if isinstance(counts, str):
        runs = _rle_string_counts(counts)
        if runs is None or (runs < 0).any():
            return f"RLE counts {counts!r:.40} is not a compressed RLE string"
        total = int(runs.sum())
    elif isinstance(counts, list) and all(type(c) is int and c >= 0 for c in counts):
        total = sum(counts)
    else:
        return (f"RLE counts {counts!r:.40} is neither a compressed RLE string nor a list of "
                "non-negative integers")
    if total != height * width:  # pycocotools' decode refuses these, or draws a partial mask
        return (f"RLE counts cover {total} pixels, not height*width = {height}*{width} = "
                f"{height * width}")
    return None


def _polygons_problem(polygons: list) -> str | None:
    """Why a list of COCO polygons would not decode, or None."""
    if not polygons:
        return "segmentation is an empty list of polygons"
    for k, polygon in enumerate(polygons):
        if not isinstance(polygon, list) or not all(type(v) in (int, float) for v in polygon):
            return f"polygon {k} is not a list of numbers"
        # pycocotools reads a 4-number "polygon" as a box, and fails on other short ones.
        if len(polygon) < 6 or len(polygon) % 2:
            return (f"polygon {k} has {len(polygon)} coordinates; a polygon needs an even "
                    "number, at least 6 (x, y of 3 points)")
    return None


def _rle_string_counts(counts: str) -> np.ndarray | None:
    """The run lengths a compressed RLE string encodes, or None if it is not one.

    pycocotools parses these strings only in C, inside decode, which draws every pixel. Format
    (its maskApi.c): each number in 5-bit groups, low first, each written as chr(48 + group), 0x20
    set on all but a number's last group, 0x10 of the last group its sign; from the fourth number
    on, a number is stored as its difference to the number two before it.
    """
    if not counts.isascii():
        return None
    chars = np.frombuffer(counts.encode(), np.uint8).astype(np.int64) - 48
    if chars.size == 0 or chars.min() < 0 or chars.max() > 63 or chars[-1] & 0x20:
        return None
    ends = np.flatnonzero((chars & 0x20) == 0)  # the last group of each number
    starts = np.concatenate(([0], ends[:-1] + 1))
    if (ends - starts).max() >= 7:  # 7 groups hold any 32-bit count
        return None
    shifts = 5 * (np.arange(chars.size) - np.repeat(starts, ends - starts + 1))
    numbers = np.add.reduceat((chars & 0x1F) << shifts, starts)
    numbers -= np.where(chars[ends] & 0x10, 1 << (shifts[ends] + 5), 0)  # negative numbers
    numbers[1::2] = np.cumsum(numbers[1::2])  # undo the differences, odd and even runs apart
    numbers[2::2] = np.cumsum(numbers[2::2])
    return numbers
