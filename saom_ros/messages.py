"""Everything-mode results -> standard ROS messages (vision_msgs, sensor_msgs); no torch, no node.

Conventions (see docs/architecture.md): instance image value 0 = no instance, i + 1 = instance i;
class ids 1..C, sent as decimal strings in detections. The semantic image follows vision_msgs'
LabelInfo convention: an unlabelled pixel holds the type's maximum (65535 = ``UNLABELED``), which
LabelInfo names "unlabeled" (the engine's semantic images use 0; ``semantic_image`` converts).
Bounding boxes follow ROS image coordinates, where pixel (u, v) has its centre at (u, v): a box
covering pixel columns x0..x1 has centre (x0 + x1) / 2 and width x1 - x0 + 1.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import cv2
import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import (Detection2D, Detection2DArray, LabelInfo, ObjectHypothesisWithPose,
                             VisionClass)

from saom_ros.classes import UNLABELLED_ID, id_to_name
from saom_ros.image_codec import array_to_image
from saom_ros.label_runs import group_by_label, label_runs

if TYPE_CHECKING:  # everything.py imports torch; this module must not.
    from saom_ros.everything import Instances


def instance_boxes(instance_image: np.ndarray, num_ids: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids 1..num_ids owning pixels, and their pixel-inclusive boxes ``int[K, 4]`` (x0, y0, x1, y1).

    From the image's row runs (``label_runs``): one pass over the pixels, then work on the few
    thousand runs, so the cost does not grow with the number of instances.
    """
    runs = label_runs(instance_image)
    keep = np.flatnonzero((runs.labels > 0) & (runs.labels <= num_ids))
    if not len(keep):
        return np.zeros(0, np.intp), np.zeros((0, 4), np.intp)
    order, first = group_by_label(runs.labels.take(keep))
    run = keep.take(order)
    starts, lengths = runs.starts.take(run), runs.lengths.take(run)
    x0, rows = starts % runs.width, starts // runs.width
    last = np.append(first[1:], len(run)) - 1  # a label's runs are in row order: first is top
    boxes = np.stack([np.minimum.reduceat(x0, first), rows.take(first),
                      np.maximum.reduceat(x0 + lengths - 1, first), rows.take(last)], axis=1)
    return runs.labels.take(run.take(first)).astype(np.intp), boxes


def detections(instances: Instances, header: Header,
               track_ids: Optional[np.ndarray] = None) -> Detection2DArray:
    """One Detection2D per instance that owns pixels in the instance image, by descending
    predicted IoU (the engine's order).

    ``id`` is the instance's value in the published instance image (its track id with
    ``track_ids``, else index + 1) and ``bbox`` the box of exactly those pixels, so a consumer can
    cut each object's mask out of the instance image.
    """
    ids, boxes = instance_boxes(instances.instance_image, len(instances))
    index = ids - 1
    # Every number at once in numpy; the loop only fills messages (attribute access is the cost).
    names = (ids if track_ids is None else track_ids.take(index)).tolist()
    classes = instances.class_ids.take(index).tolist()
    scores = instances.class_scores.take(index).tolist()
    x0, y0, x1, y1 = boxes.T
    centers_x, centers_y = ((x0 + x1) / 2.0).tolist(), ((y0 + y1) / 2.0).tolist()
    sizes_x, sizes_y = (x1 - x0 + 1.0).tolist(), (y1 - y0 + 1.0).tolist()
    found = []
    for name, class_id, score, cx, cy, sx, sy in zip(names, classes, scores, centers_x, centers_y,
                                                     sizes_x, sizes_y):
        det = Detection2D(header=header, id=str(name))
        bbox = det.bbox
        position = bbox.center.position
        position.x, position.y = cx, cy
        bbox.size_x, bbox.size_y = sx, sy
        hyp = ObjectHypothesisWithPose()
        hypothesis = hyp.hypothesis
        hypothesis.class_id, hypothesis.score = str(class_id), score
        det.results = [hyp]
        found.append(det)
    return Detection2DArray(header=header, detections=found)


UNLABELED = 65535  # vision_msgs: the label image type's maximum is the UNLABELED class


def label_image(labels: np.ndarray, header: Header) -> Image:
    """A mono16 label image (instance or semantic) carrying ``header``."""
    return array_to_image(labels.astype(np.uint16, copy=False), "mono16", header)


def semantic_image(semantic: np.ndarray, header: Header) -> Image:
    """The mono16 semantic image of an engine result (0 = unlabelled) in vision_msgs' convention:
    unlabelled pixels become ``UNLABELED``, class ids 1..C stay."""
    return label_image(np.where(semantic == UNLABELLED_ID, UNLABELED, semantic), header)


def label_info(class_names: Sequence[str], header: Header, threshold: float) -> LabelInfo:
    """Every class id 1..C with its name, and ``UNLABELED`` = "unlabeled"."""
    names = {**id_to_name(class_names), UNLABELED: "unlabeled"}
    del names[UNLABELLED_ID]
    return LabelInfo(header=header, threshold=float(threshold),
                     class_map=[VisionClass(class_id=i, class_name=name)
                                for i, name in names.items()])


_FONT, _SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.4


def palette(count: int) -> np.ndarray:
    """``uint8[count + 1, 3]`` distinct RGB colours, entry 0 black; an id always gets one colour."""
    hues = (np.arange(count + 1) * 0.618033988749895 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 200), np.full_like(hues, 255)], axis=1)
    colours = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    colours[0] = 0
    return colours


def overlay(rgb: np.ndarray, instances: Instances, class_names: Sequence[str]) -> np.ndarray:
    """The image with each instance tinted in its own colour, its class name centred on its box."""
    labels = instances.instance_image
    tinted = palette(len(instances))[labels]
    out = np.where((labels > 0)[..., None], rgb // 2 + tinted // 2, rgb).astype(np.uint8)
    names = id_to_name(class_names)
    ids, boxes = instance_boxes(labels, len(instances))
    for inst_id, (x0, y0, x1, y1) in zip(ids.tolist(), boxes.tolist()):
        text = names.get(int(instances.class_ids[inst_id - 1]), "?")
        (tw, th), _ = cv2.getTextSize(text, _FONT, _SCALE, 1)
        org = ((x0 + x1 - tw) // 2, (y0 + y1 + th) // 2)
        cv2.putText(out, text, org, _FONT, _SCALE, (0, 0, 0), 3, cv2.LINE_AA)  # outline: readable
        cv2.putText(out, text, org, _FONT, _SCALE, (255, 255, 255), 1, cv2.LINE_AA)  # on any colour
    return out
