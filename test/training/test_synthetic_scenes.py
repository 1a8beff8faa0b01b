"""The synthetic scene generator: whole objects of distinct parts, occlusion, lighting."""
from __future__ import annotations

import numpy as np

from saom_ros.classes import SAOM_CLASSES
from saom_ros.training.synthetic_scenes import SYNTH_CLASSES, TEMPLATES, generate_scene


def scenes(n: int, seed: int = 0):
    return [generate_scene(np.random.default_rng([seed, i])) for i in range(n)]


def test_classes_are_saom_classes_with_a_template_each():
    assert set(SYNTH_CLASSES) <= set(SAOM_CLASSES)
    assert set(TEMPLATES) == set(SYNTH_CLASSES)


def test_scene_is_deterministic_in_its_seed():
    a, b = (generate_scene(np.random.default_rng([3, 7])) for _ in range(2))
    c = generate_scene(np.random.default_rng([3, 8]))
    assert a.image.shape == (256, 256, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image)
    assert [o.class_name for o in a.objects] == [o.class_name for o in b.objects]
    assert not np.array_equal(a.image, c.image)


def test_objects_are_disjoint_and_made_of_several_parts():
    n_objects = 0
    for scene in scenes(20):
        covered = np.zeros(scene.image.shape[:2], int)
        for obj in scene.objects:
            n_objects += 1
            covered += obj.mask
            assert obj.class_name in SYNTH_CLASSES
            for part in obj.parts:
                assert not (part & ~obj.mask).any()  # parts lie inside their object
            # disjoint parts (each pixel has one owner)
            assert (np.sum(obj.parts, axis=0) <= 1).all()
        assert covered.max() <= 1  # occlusion resolved: one object per pixel
    assert n_objects >= 40
    several = [len(o.parts) >= 2 for s in scenes(20) for o in s.objects]
    assert np.mean(several) > 0.8


def test_parts_of_an_object_look_different():
    """What makes a part-trained model split objects: neighbouring parts differ in colour."""
    gaps = []
    for scene in scenes(15):
        for obj in scene.objects:
            means = [scene.image[p].reshape(-1, 3).mean(0) for p in obj.parts]
            if len(means) >= 2:
                gaps.append(max(np.abs(m1 - m2).max() for i, m1 in enumerate(means)
                                for m2 in means[i + 1:]))
    assert np.median(gaps) > 40


def test_scenes_have_occlusion_and_lighting_variation():
    sc = scenes(30)
    # Occlusion leaves objects whose visible masks touch another object's.
    touching = 0
    for s in sc:
        for i, a in enumerate(s.objects):
            grown = np.zeros_like(a.mask)
            grown[1:] |= a.mask[:-1]
            grown[:-1] |= a.mask[1:]
            grown[:, 1:] |= a.mask[:, :-1]
            grown[:, :-1] |= a.mask[:, 1:]
            touching += any((grown & b.mask).any() for j, b in enumerate(s.objects) if j != i)
    assert touching >= 10
    brightness = [s.image.mean() for s in sc]
    assert np.std(brightness) > 8
