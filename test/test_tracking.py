"""saom_ros.tracking: ids persist under motion, survive short misses, are unique and not reused."""
import numpy as np
import pytest

from saom_ros.tracking import MAX_ID, Tracker, track_image


def scene(boxes, shape=(60, 80)):
    """An instance image with instance i + 1 on boxes[i] = (x0, y0, x1, y1), later boxes on top."""
    image = np.zeros(shape, np.uint16)
    for i, (x0, y0, x1, y1) in reversed(list(enumerate(boxes))):
        image[y0:y1, x0:x1] = i + 1
    return image, len(boxes)


BOXES = [(5, 5, 25, 25), (30, 10, 50, 30), (55, 35, 75, 55)]


def shifted(boxes, dx, dy=0):
    return [(x0 + dx, y0 + dy, x1 + dx, y1 + dy) for x0, y0, x1, y1 in boxes]


def test_ids_persist_while_the_scene_shifts_and_the_order_changes():
    tracker = Tracker()
    first = tracker.assign(*scene(BOXES))
    assert sorted(first.tolist()) == [1, 2, 3]
    ids = first
    for step in range(1, 6):
        order = [2, 0, 1] if step % 2 else [0, 1, 2]  # score order changes between frames
        boxes = [shifted(BOXES, 2 * step, step)[k] for k in order]
        ids = tracker.assign(*scene(boxes))
        assert ids.tolist() == [first[k] for k in order]


def test_new_objects_get_new_ids_and_lost_ones_are_remembered_for_max_missed_frames():
    tracker = Tracker(max_missed=2)
    a, b, c = tracker.assign(*scene(BOXES)).tolist()
    assert tracker.assign(*scene(BOXES[:2])).tolist() == [a, b]  # c missed once
    assert tracker.assign(*scene(BOXES[:2])).tolist() == [a, b]  # twice
    assert tracker.assign(*scene(BOXES)).tolist() == [a, b, c]  # back: same id
    for _ in range(3):
        tracker.assign(*scene(BOXES[:2]))
    ids = tracker.assign(*scene(BOXES)).tolist()  # missed 3 > 2 frames: a new object
    assert ids[:2] == [a, b] and ids[2] not in (a, b, c)


def test_a_missed_object_keeps_its_id_whatever_covered_its_place_meanwhile():
    """Behind a missed object everything mode usually returns the wall; an occluder may pass."""
    wall = (0, 0, 80, 60)
    tracker = Tracker(max_missed=2)
    obj, wall_id = tracker.assign(*scene([BOXES[0], wall])).tolist()
    assert tracker.assign(*scene([wall])).tolist() == [wall_id]  # the wall owns the object's place
    assert tracker.assign(*scene([BOXES[0], wall])).tolist() == [obj, wall_id]
    for _ in range(2):  # missed twice, a neighbour grown over half of its place
        assert tracker.assign(*scene([(15, 0, 50, 30), wall])).tolist()[1] == wall_id
    assert tracker.assign(*scene([BOXES[0], wall])).tolist() == [obj, wall_id]


@pytest.mark.parametrize("threshold, kept", [(0.3, True), (0.4, False)])
def test_a_missed_track_matches_by_the_iou_of_its_own_footprint(threshold, kept):
    tracker = Tracker(iou_threshold=threshold)
    (first,) = tracker.assign(*scene([(0, 0, 20, 20)])).tolist()
    tracker.assign(*scene([]))  # missed
    (back,) = tracker.assign(*scene([(10, 0, 30, 20)])).tolist()  # IoU 1/3 with its footprint
    assert (back == first) is kept


def test_a_low_iou_match_is_a_new_object():
    tracker = Tracker(iou_threshold=0.5)
    (first,) = tracker.assign(*scene([(0, 0, 20, 20)])).tolist()
    (second,) = tracker.assign(*scene([(10, 0, 30, 20)])).tolist()  # IoU 1/3
    assert second != first


def test_the_optimal_assignment_beats_greedy():
    # Columns: A = 0..11, B = 12..19 before; Y = 8..15, X = 16..27 now (full height).
    # IoU(B, Y) = 1/3 is the best pair, but taking it leaves A with IoU(A, X) = 0; the optimal
    # assignment A-Y (1/4) + B-X (1/4) keeps both ids.
    tracker = Tracker(iou_threshold=0.2, max_missed=0)
    a, b = tracker.assign(*scene([(0, 0, 12, 10), (12, 0, 20, 10)], shape=(10, 40))).tolist()
    ids = tracker.assign(*scene([(8, 0, 16, 10), (16, 0, 28, 10)], shape=(10, 40)))
    assert ids.tolist() == [a, b]


def test_ids_are_not_reused_within_the_delay():
    tracker = Tracker(max_missed=0, id_reuse_delay=10)
    tracker._next_id = MAX_ID - 1  # wrap around soon
    seen = []
    for frame in range(8):
        # A different place every frame: every object is new, every old track ends.
        (new_id,) = tracker.assign(*scene([(frame * 10, 0, frame * 10 + 5, 5)])).tolist()
        seen.append(new_id)
    assert len(set(seen)) == 8 and all(1 <= i <= MAX_ID for i in seen)
    assert seen[:3] == [MAX_ID - 1, MAX_ID, 1]


def test_a_retired_id_returns_only_after_the_delay():
    tracker = Tracker(max_missed=0, id_reuse_delay=3)
    (first,) = tracker.assign(*scene([(0, 0, 5, 5)])).tolist()
    got = []
    for frame in range(2, 7):
        tracker._next_id = first  # the allocator looks at the retired id first
        got.append(int(tracker.assign(*scene([(10 * frame, 0, 10 * frame + 5, 5)]))[0]))
    # Its track ended at frame 2; the id is given out again only at frame 6, 4 > 3 frames later.
    assert first not in got[:4] and got[4] == first


def test_every_instance_gets_an_id_unique_in_its_frame():
    rng = np.random.default_rng(1)
    tracker = Tracker()
    for _ in range(5):
        boxes = [tuple(int(v) for v in (x, y, x + rng.integers(3, 20), y + rng.integers(3, 20)))
                 for x, y in rng.integers(0, 60, (40, 2))]
        ids = tracker.assign(*scene(boxes))  # some instances are hidden under others
        assert len(set(ids.tolist())) == len(boxes) and ids.min() >= 1


def test_prompt_source_association_is_used_instead_of_iou():
    tracker = Tracker(max_missed=0)
    a, b = tracker.assign(*scene(BOXES[:2])).tolist()
    # The masks moved far (IoU 0), but the engine says they came from previous instances 1 and 0.
    far = shifted(BOXES[:2], 0, 30)
    assert tracker.assign(*scene(far), prompt_source=np.array([1, 0])).tolist() == [b, a]
    # Two masks from the same previous instance (index 0, id b): the first keeps its id, the
    # second is matched by IoU (it lies exactly on a: far[1] has id a since the frame before);
    # -1: not prompted from a previous instance.
    ids = tracker.assign(*scene([(70, 0, 79, 9), far[1], (0, 0, 5, 5)]),
                         prompt_source=np.array([0, 0, -1])).tolist()
    assert ids[:2] == [b, a] and ids[2] not in (a, b)


def test_a_prompt_source_that_the_footprints_contradict_is_not_followed():
    """A point inside one small instance returned the whole of another one (a part and its
    object): the mask keeps the object's track, found by IoU, not the part's."""
    tracker = Tracker()
    part, whole = tracker.assign(*scene([(10, 10, 15, 15), (20, 0, 60, 40)])).tolist()
    assert tracker.assign(*scene([(21, 0, 61, 40)]), prompt_source=np.array([0])).tolist() == \
        [whole]


def test_reset_forgets_tracks_but_not_recent_ids():
    tracker = Tracker(id_reuse_delay=100)
    first = tracker.assign(*scene(BOXES)).tolist()
    tracker.reset()
    again = tracker.assign(*scene(BOXES)).tolist()
    assert not set(first) & set(again)


def test_a_new_resolution_starts_over():
    tracker = Tracker()
    first = tracker.assign(*scene(BOXES)).tolist()
    again = tracker.assign(*scene([(5, 5, 25, 25)], shape=(30, 40))).tolist()
    assert again[0] not in first


@pytest.mark.parametrize("kwargs", [{"iou_threshold": 0.0}, {"iou_threshold": 1.5},
                                    {"max_missed": -1}, {"id_reuse_delay": -1}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        Tracker(**kwargs)


def test_track_image_relabels_instances():
    image = np.array([[0, 1, 2], [2, 2, 0]], np.uint16)
    np.testing.assert_array_equal(track_image(image, np.array([7, 65535], np.uint16)),
                                  [[0, 7, 65535], [65535, 65535, 0]])


def test_update_takes_instances_and_their_prompt_sources():
    from test_messages import make_instances

    def instances(boxes, prompt_source=None):
        masks = np.zeros((len(boxes), 60, 80), bool)
        for m, (x0, y0, x1, y1) in zip(masks, boxes):
            m[y0:y1, x0:x1] = True
        result = make_instances(masks, [1] * len(boxes), [0.5] * len(boxes))
        if prompt_source is not None:
            result.prompt_source = np.asarray(prompt_source, np.int32)
        return result

    tracker = Tracker(max_missed=0)
    a, b = tracker.update(instances(BOXES[:2])).tolist()
    assert tracker.update(instances(shifted(BOXES[:2], 2))).tolist() == [a, b]  # by IoU (-1s)
    far = shifted(BOXES[:2], 0, 30)
    assert tracker.update(instances(far, prompt_source=[1, 0])).tolist() == [b, a]
