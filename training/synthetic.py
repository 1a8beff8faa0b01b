"""Synthetic datasets (`saom-train synth`): the scenes of ``synthetic_scenes`` in the collector's
COCO layout.

The output is ``images/*.png``, ``annotations.json`` (visible whole objects, category ids 1..C of
:data:`SYNTH_CLASSES`) and ``annotations_parts.json`` (visible parts, class-agnostic: every part
is category 1, ``"object"``, the convention for class-agnostic models), plus
``synth_settings.json``, the scene settings a rerun must match to resume in that folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from saom_ros.classes import AGNOSTIC_CLASSES
from saom_ros.training.coco_masks import mask_to_annotation
from saom_ros.training.datasets import (DatasetError, atomic_write_json, coco_categories,
                                        load_json, write_coco, write_image)
from saom_ros.training.synthetic_scenes import SYNTH_CLASSES, generate_scene


# ----------------------------------------------------------------------------- datasets
ANNOTATIONS = "annotations.json"
PART_ANNOTATIONS = "annotations_parts.json"
SETTINGS = "synth_settings.json"
# What a scene's pixels depend on besides its index (so not the number of images).
SCENE_SETTINGS = ("seed", "size", "num_objects")


def write_dataset(out_dir: str | Path, num_images: int, seed: int = 0, size: int = 256,
                  num_objects: tuple[int, int] = (3, 6)) -> Path:
    """Render ``num_images`` scenes into ``out_dir`` (images/, annotations*.json); returns out_dir.

    Scene ``i`` depends only on i and the scene settings (seed, size, num_objects), so datasets
    of different lengths share their first scenes and an interrupted run resumes: existing images
    are kept, and a folder whose annotations already describe the same parameters is left as it
    is. The folder records the scene settings (:data:`SETTINGS`) before its first image; a folder
    drawn with other settings, or holding a dataset without that record, is refused with
    DatasetError.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    if not 1 <= num_objects[0] <= num_objects[1]:
        raise ValueError(f"num_objects must be 1 <= min <= max, got {num_objects}")
    out = Path(out_dir)
    info = {"description": "saom_ros synthetic indoor scenes", "generator": "saom-train synth",
            "seed": seed, "num_images": num_images, "size": size,
            "num_objects": list(num_objects)}
    _claim(out, {k: info[k] for k in SCENE_SETTINGS})
    if _complete(out, info):
        return out
    images, objects, parts = [], [], []
    for i in range(num_images):
        scene = generate_scene(np.random.default_rng([seed, i]), size, num_objects)
        file_name = f"images/scene_{i:05d}.png"
        if not (out / file_name).is_file():
            write_image(out / file_name, scene.image)
        images.append({"id": i + 1, "file_name": file_name, "height": size, "width": size})
        for obj in scene.objects:
            obj_id = len(objects) + 1
            objects.append(mask_to_annotation(obj.mask, obj_id, i + 1,
                                              SYNTH_CLASSES.index(obj.class_name) + 1))
            parts += [mask_to_annotation(p, len(parts) + 1, i + 1, 1, object_id=obj_id)
                      for p in obj.parts]
    # Parts last: a folder with both files is complete.
    write_coco(out / ANNOTATIONS, images, objects, coco_categories(SYNTH_CLASSES), info)
    write_coco(out / PART_ANNOTATIONS, images, parts, coco_categories(AGNOSTIC_CLASSES),
               {**info, "description": info["description"] + " (class-agnostic parts)"})
    return out


def _claim(out: Path, settings: dict) -> None:
    """Record in ``out`` the settings its scenes are drawn with; refuse a folder drawn with others
    (resuming there would pair its kept images with the new settings' annotations) or holding a
    dataset whose settings are unknown (it would be overwritten)."""
    recorded = _recorded_settings(out)
    if recorded is None:
        found = [n for n in (ANNOTATIONS, PART_ANNOTATIONS, "images") if (out / n).exists()]
        if found:
            raise DatasetError(f"{out} already holds {', '.join(found)} but no {SETTINGS}: its "
                               "scenes' settings are unknown; write the scenes to a new folder")
    else:
        differing = [f"{k} {recorded.get(k)!r} (this run: {v!r})" for k, v in settings.items()
                     if recorded.get(k) != v]
        if differing:
            raise DatasetError(f"{out} holds scenes drawn with other settings: "
                               f"{', '.join(differing)}; its images would not match this run's "
                               "annotations. Write to another folder, or delete this one first")
    if not (out / SETTINGS).is_file():
        atomic_write_json(out / SETTINGS, settings)


def _recorded_settings(out: Path) -> dict | None:
    """The scene settings ``out`` was drawn with: its record or, in a folder finished before
    records existed, the part annotations' info (written last); None if it holds neither."""
    if (out / SETTINGS).is_file():
        recorded = load_json(out / SETTINGS)
        if not isinstance(recorded, dict):
            raise DatasetError(f"{out / SETTINGS} is not a JSON object of scene settings")
        return recorded
    if (out / PART_ANNOTATIONS).is_file():
        data = load_json(out / PART_ANNOTATIONS)
        info = data.get("info") if isinstance(data, dict) else None
        if isinstance(info, dict) and info.get("generator") == "saom-train synth":
            return {k: info.get(k) for k in SCENE_SETTINGS}
    return None


def _complete(out: Path, info: dict) -> bool:
    """Whether ``out`` already holds this exact dataset."""
    try:
        return all(json.loads((out / name).read_text()).get("info", {}).get(k) == v
                   for name in (ANNOTATIONS, PART_ANNOTATIONS) for k, v in info.items()
                   if k != "description")
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``saom-train synth``."""
    parser.add_argument("out", type=Path, help="output folder (images/, annotations.json, "
                        f"annotations_parts.json, {SETTINGS})")
    parser.add_argument("-n", "--num-images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="scene i depends on (seed, i) only")
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--min-objects", type=int, default=3)
    parser.add_argument("--max-objects", type=int, default=6)


def run(args: argparse.Namespace) -> int:
    """``saom-train synth``: write a synthetic dataset; returns the exit status."""
    out = write_dataset(args.out, args.num_images, args.seed, args.size,
                        (args.min_objects, args.max_objects))
    print(f"wrote {args.num_images} synthetic scenes ({', '.join(SYNTH_CLASSES)}) to {out}")
    return 0
