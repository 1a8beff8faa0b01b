"""Synthetic datasets: COCO output, resume, settings records, the synth CLI."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from saom_ros.training.coco_masks import decode_segmentation
from saom_ros.training.datasets import CocoInstances, DatasetError
from saom_ros.training.synthetic import (
    ANNOTATIONS, PART_ANNOTATIONS, SETTINGS, add_arguments, run, write_dataset)
from saom_ros.training.synthetic_scenes import SYNTH_CLASSES, generate_scene


def test_write_dataset_is_coco_with_classes_and_agnostic_parts(tmp_path: Path):
    out = write_dataset(tmp_path / "ds", num_images=6, seed=1)
    objects = CocoInstances(out / ANNOTATIONS)
    parts = CocoInstances(out / PART_ANNOTATIONS)
    assert objects.class_names == SYNTH_CLASSES
    assert parts.class_names == ("object",)
    assert len(objects) == len(parts) == 6
    data = json.loads((out / PART_ANNOTATIONS).read_text())
    whole = {a["id"]: a for a in json.loads((out / ANNOTATIONS).read_text())["annotations"]}
    for ann in data["annotations"]:
        obj = whole[ann["object_id"]]
        assert obj["image_id"] == ann["image_id"]
        pm = decode_segmentation(ann["segmentation"], 256, 256)
        om = decode_segmentation(obj["segmentation"], 256, 256)
        assert not (pm & ~om).any()
    # Annotations match what the generator drew for that scene.
    scene = generate_scene(np.random.default_rng([1, 2]))
    sample = objects[2]
    assert np.array_equal(sample.image, scene.image)
    assert [SYNTH_CLASSES[c - 1] for c in sample.class_ids] == [o.class_name for o in scene.objects]
    assert np.array_equal(sample.masks, np.stack([o.mask for o in scene.objects]))
    assert sum(len(o.parts) for o in scene.objects) == len(parts[2])


def test_write_dataset_resumes_and_rejects_bad_arguments(tmp_path: Path):
    out = write_dataset(tmp_path / "ds", num_images=3, seed=2)
    stamp = (out / ANNOTATIONS).stat().st_mtime_ns
    write_dataset(out, num_images=3, seed=2)
    assert (out / ANNOTATIONS).stat().st_mtime_ns == stamp  # complete: left as it is
    (out / PART_ANNOTATIONS).unlink()  # interrupted before the last file
    write_dataset(out, num_images=3, seed=2)
    assert len(CocoInstances(out / PART_ANNOTATIONS)) == 3
    with pytest.raises(ValueError, match="num_images"):
        write_dataset(tmp_path / "bad", num_images=0)
    with pytest.raises(ValueError, match="num_objects"):
        write_dataset(tmp_path / "bad", num_images=1, num_objects=(4, 2))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_write_dataset_refuses_a_folder_drawn_with_other_settings(tmp_path: Path):
    """Resuming keeps existing images, so other scene settings would pair them with another
    picture's annotations: refused, naming the folder and the settings, with nothing changed."""
    out = write_dataset(tmp_path / "ds", num_images=3, seed=0, size=64)
    (out / ANNOTATIONS).unlink()  # also when interrupted before the annotations
    before = folder_bytes(out)
    for change, message in [({"seed": 7}, r"seed 0 \(this run: 7\)"),
                            ({"size": 96}, r"size 64 \(this run: 96\)"),
                            ({"num_objects": (1, 2)},
                             r"num_objects \[3, 6\] \(this run: \[1, 2\]\)")]:
        with pytest.raises(DatasetError, match=re.escape(f"{out} holds scenes drawn with other "
                                                         "settings: ") + message):
            write_dataset(out, **{"num_images": 3, "seed": 0, "size": 64, **change})
        assert folder_bytes(out) == before
    # The same settings resume, and may change the number of scenes.
    write_dataset(out, num_images=4, seed=0, size=64)
    scene = generate_scene(np.random.default_rng([0, 3]), 64)
    assert np.array_equal(CocoInstances(out / ANNOTATIONS)[3].masks,
                          np.stack([o.mask for o in scene.objects]))
    assert all(folder_bytes(out)[k] == v for k, v in before.items() if k.startswith("images/"))


def test_write_dataset_adopts_older_folders_and_keeps_foreign_ones(tmp_path: Path):
    out = write_dataset(tmp_path / "old", num_images=2, seed=5, size=64)
    (out / SETTINGS).unlink()  # finished before folders recorded their settings
    with pytest.raises(DatasetError, match=r"seed 5 \(this run: 6\)"):
        write_dataset(out, num_images=2, seed=6, size=64)
    write_dataset(out, num_images=2, seed=5, size=64)
    assert json.loads((out / SETTINGS).read_text()) == {"seed": 5, "size": 64,
                                                       "num_objects": [3, 6]}
    # Another tool's dataset (no record): left as it is.
    other = tmp_path / "other"
    other.mkdir()
    (other / ANNOTATIONS).write_text("{}")
    with pytest.raises(DatasetError, match=re.escape(f"{other} already holds {ANNOTATIONS} but "
                                                     f"no {SETTINGS}")):
        write_dataset(other, num_images=1, size=64)
    assert folder_bytes(other) == {ANNOTATIONS: b"{}"}


def test_cli_arguments_and_run(tmp_path: Path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "cli"), "-n", "2", "--seed", "4", "--size", "128"])
    assert run(args) == 0
    assert "2 synthetic scenes" in capsys.readouterr().out
    ds = CocoInstances(tmp_path / "cli" / ANNOTATIONS)
    assert ds[0].image.shape == (128, 128, 3)
