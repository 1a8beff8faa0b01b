"""messages: hand-built Instances -> Detection2DArray, label images, LabelInfo, overlay."""
import subprocess
import sys

import numpy as np
import pytest
from std_msgs.msg import Header

from saom_ros import messages
from saom_ros.classes import SAOM_CLASSES
from saom_ros.everything import Instances
from saom_ros.image_codec import image_to_array


def make_instances(masks: np.ndarray, class_ids, class_scores) -> Instances:
    """Instances as the engine defines them: each pixel goes to the first (best) mask on it."""
    masks = np.asarray(masks, dtype=bool)
    n, h, w = masks.shape
    instance_image = np.zeros((h, w), np.uint16)
    semantic_image = np.zeros((h, w), np.uint16)
    for i in reversed(range(n)):  # best last, so it wins
        instance_image[masks[i]] = i + 1
        semantic_image[masks[i]] = class_ids[i]
    boxes = np.zeros((n, 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[i] = (xs.min(), ys.min(), xs.max(), ys.max())
    return Instances(masks=masks, boxes=boxes, predicted_iou=np.full(n, 0.9, np.float32),
                     stability_score=np.full(n, 0.95, np.float32),
                     class_ids=np.asarray(class_ids, np.int32),
                     class_scores=np.asarray(class_scores, np.float32),
                     instance_image=instance_image, semantic_image=semantic_image)


def rect(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


HEADER = Header(frame_id="camera_optical")
HEADER.stamp.sec, HEADER.stamp.nanosec = 1234, 567


@pytest.fixture
def scene() -> Instances:
    h, w = 40, 60
    masks = [rect(h, w, 2, 3, 10, 20),       # id 1
             rect(h, w, 8, 15, 30, 35),      # id 2, partly under id 1
             rect(h, w, 3, 4, 9, 19),        # id 3, entirely under id 1: owns no pixels
             rect(h, w, 59, 39, 59, 39)]     # id 4, one corner pixel
    return make_instances(masks, class_ids=[5, 17, 2, 55], class_scores=[0.9, 0.8, 0.7, 0.6])


def test_detections_carry_header_id_class_and_score(scene):
    msg = messages.detections(scene, HEADER)
    assert msg.header == HEADER
    assert [d.id for d in msg.detections] == ["1", "2", "4"]  # id 3 owns no pixels
    assert all(d.header == HEADER for d in msg.detections)
    assert [d.results[0].hypothesis.class_id for d in msg.detections] == ["5", "17", "55"]
    np.testing.assert_allclose([d.results[0].hypothesis.score for d in msg.detections],
                               [0.9, 0.8, 0.6], rtol=1e-6)


def test_detection_ids_are_track_ids_when_given(scene):
    msg = messages.detections(scene, HEADER, track_ids=np.array([40, 7, 0, 65535], np.uint16))
    assert [d.id for d in msg.detections] == ["40", "7", "65535"]


def test_bbox_is_the_box_of_the_ids_pixels_in_the_instance_image(scene):
    for det in messages.detections(scene, HEADER).detections:
        ys, xs = np.nonzero(scene.instance_image == int(det.id))
        assert det.bbox.center.position.x == (xs.min() + xs.max()) / 2
        assert det.bbox.center.position.y == (ys.min() + ys.max()) / 2
        assert det.bbox.size_x == xs.max() - xs.min() + 1
        assert det.bbox.size_y == ys.max() - ys.min() + 1
    # id 2 lost its top-left corner to id 1 but still spans its whole rectangle
    det2 = messages.detections(scene, HEADER).detections[1]
    assert (det2.bbox.size_x, det2.bbox.size_y) == (23, 21)
    # a single corner pixel: centre on the pixel, size 1
    det4 = messages.detections(scene, HEADER).detections[2]
    assert (det4.bbox.center.position.x, det4.bbox.center.position.y) == (59, 39)
    assert (det4.bbox.size_x, det4.bbox.size_y) == (1, 1)


def test_instance_boxes_match_a_per_id_scan_on_random_labels():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 30, size=(48, 64)).astype(np.uint16)
    labels[labels == 7] = 0  # an id with no pixels
    ids, boxes = messages.instance_boxes(labels, 30)
    expected_ids = [i for i in range(1, 31) if (labels == i).any()]
    assert ids.tolist() == expected_ids
    for i, box in zip(ids, boxes):
        ys, xs = np.nonzero(labels == i)
        assert box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_no_instances_give_an_empty_array_with_the_header():
    empty = make_instances(np.zeros((0, 5, 6), bool), [], [])
    msg = messages.detections(empty, HEADER)
    assert msg.header == HEADER and len(msg.detections) == 0


def test_label_images_are_mono16_with_the_header(scene):
    inst = messages.label_image(scene.instance_image, HEADER)
    sem = messages.semantic_image(scene.semantic_image, HEADER)
    assert inst.header == sem.header == HEADER and inst.encoding == sem.encoding == "mono16"
    assert (inst.height, inst.width) == (sem.height, sem.width) == (40, 60)
    np.testing.assert_array_equal(image_to_array(inst), scene.instance_image)
    labelled = scene.semantic_image > 0
    np.testing.assert_array_equal(image_to_array(sem)[labelled], scene.semantic_image[labelled])
    assert (image_to_array(sem)[~labelled] == messages.UNLABELED).all()  # vision_msgs convention
    assert image_to_array(sem)[0, 0] == 65535  # unlabelled background
    assert image_to_array(sem)[5, 5] == 5


def test_label_info_lists_every_class_and_unlabeled_as_65535():
    msg = messages.label_info(SAOM_CLASSES, HEADER, 0.88)
    assert msg.header == HEADER
    assert msg.threshold == pytest.approx(0.88)
    class_map = {c.class_id: c.class_name for c in msg.class_map}
    assert class_map == {**{i + 1: n for i, n in enumerate(SAOM_CLASSES)}, 65535: "unlabeled"}
    assert len(msg.class_map) == len(SAOM_CLASSES) + 1  # no class 0


def test_detection_class_ids_exist_in_label_info(scene):
    known = {str(c.class_id) for c in messages.label_info(SAOM_CLASSES, HEADER, 0.5).class_map}
    detections = messages.detections(scene, HEADER).detections
    assert {d.results[0].hypothesis.class_id for d in detections} <= known


def test_overlay_tints_instances_and_names_them():
    h, w = 200, 300
    scene = make_instances([rect(h, w, 10, 10, 140, 190), rect(h, w, 150, 10, 290, 190)],
                           class_ids=[1, 2], class_scores=[0.9, 0.8])
    rgb = np.full((h, w, 3), 100, np.uint8)
    out = messages.overlay(rgb, scene, SAOM_CLASSES)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[scene.instance_image == 0], rgb[scene.instance_image == 0])
    colours = messages.palette(2)
    np.testing.assert_array_equal(out[20, 20], 50 + colours[1] // 2)  # tinted, away from the text
    np.testing.assert_array_equal(out[20, 160], 50 + colours[2] // 2)
    assert (out[90:110, 50:100] > 200).all(axis=2).any()  # white text at the first box's centre


def test_palette_colours_are_distinct_and_zero_is_black():
    colours = messages.palette(50)
    assert colours.shape == (51, 3) and colours[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in colours[1:]}) == 50


def test_module_imports_without_torch():
    code = ("import sys; import saom_ros.messages, saom_ros.image_codec; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
