"""Per-scene progress files (DIR/parts/<scene>.json), the folder's record of what it collects
(DIR/collection.json) and their merge into annotations.json."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from saom_ros.training.collect_config import CollectConfig, CollectError
from saom_ros.training.datasets import (atomic_write_json, coco_categories, ithor_split,
                                        scene_number, write_coco)

ANNOTATIONS = "annotations.json"
RECORD = "collection.json"  # {"scenes": [...], "frames_per_scene": N}: what DIR is a collection of


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` (full disk, no permission) into a CollectError."""
    try:
        yield
    except OSError as err:
        raise CollectError(f"could not write {path}: {err.strerror or err}") from None


def part_path(output: Path, scene: str) -> Path:
    """The progress file of ``scene`` in the output folder ``output``."""
    return output / "parts" / f"{scene}.json"


def load_part(path: Path) -> dict:
    """The part saved at ``path``; CollectError if it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CollectError(f"progress file {path} is unreadable ({err}); delete it to collect "
                           "that scene again") from None


def frames_left(config: CollectConfig, scene: str) -> int:
    """How many of the frames of ``scene`` its part lacks."""
    path = part_path(config.output, scene)
    done = set(load_part(path)["frames_done"]) if path.exists() else set()
    return sum(i not in done for i in range(config.frames_per_scene))


def existing_parts(config: CollectConfig) -> dict[str, dict]:
    """Parts already in the output folder; CollectError if they were made with other settings."""
    parts = {}
    settings = config.content_settings()
    for path in sorted((config.output / "parts").glob("*.json")):
        part = load_part(path)
        differing = {k: (part["settings"].get(k), v) for k, v in settings.items()
                     if part["settings"].get(k) != v}
        if differing:
            details = ", ".join(f"{k} {old!r} vs now {new!r}" for k, (old, new) in
                                differing.items())
            raise CollectError(f"{config.output} holds data collected with other settings "
                               f"({path.name}: {details}); use the same settings to resume, or "
                               "another output folder")
        parts[part["scene"]] = part
    return parts


def _names(scenes: set[str]) -> str:
    ordered = sorted(scenes, key=scene_number)
    return ", ".join(ordered[:6]) + (f" and {len(ordered) - 6} more" if len(ordered) > 6 else "")


def _splits(scenes: list[str]) -> str:
    return "/".join(sorted({ithor_split(s) for s in scenes}))


def claim_folder(config: CollectConfig, scenes: list[str]) -> tuple[list[str], int]:
    """(scenes, frames per scene) to collect in ``config.output``, recorded there.

    Refuses a folder holding a dataset the collector did not make (it would be overwritten), and
    one holding data of another selection unless ``config.extend``: then the folder's scenes and
    this run's are collected, with the larger frame count (never fewer frames than it holds).
    """
    out = config.output
    has_parts = any((out / "parts").glob("*.json"))
    written = recorded = _load_record(out / RECORD) if (out / RECORD).is_file() else None
    if recorded is None and not has_parts:
        found = [n for n in (ANNOTATIONS, "images") if (out / n).exists()]
        if found:
            raise CollectError(f"{out} already holds {' and '.join(found)} but no record of the "
                               f"collector ({RECORD}, parts/): it would be overwritten; collect "
                               "into another folder")
    if recorded is None and has_parts:  # collected before folders had records
        recorded = _inferred_record(out)
    if recorded is None or not has_parts:  # nothing collected yet: this run decides
        selection = (scenes, config.frames_per_scene)
    else:
        selection = _selection(config, scenes, recorded)
    record = {"scenes": selection[0], "frames_per_scene": selection[1]}
    if record != written:
        with writing(out / RECORD):
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / RECORD, record)
    return selection


def _load_record(path: Path) -> dict:
    record = load_part(path)
    if not (isinstance(record, dict) and isinstance(record.get("scenes"), list)
            and isinstance(record.get("frames_per_scene"), int)):
        raise CollectError(f"{path} is not a collection record (scenes, frames_per_scene)")
    return record


def _inferred_record(out: Path) -> dict:
    """The record of a folder from before records existed: its parts' scenes and frames."""
    parts = [load_part(p) for p in sorted((out / "parts").glob("*.json"))]
    return {"scenes": sorted((p["scene"] for p in parts), key=scene_number),
            "frames_per_scene": max((max(p["frames_done"], default=-1) + 1 for p in parts))}


def _selection(config: CollectConfig, scenes: list[str], recorded: dict) -> tuple[list[str], int]:
    """The selection of a folder holding data ``recorded`` and asked for ``scenes``."""
    old, new = set(recorded["scenes"]), set(scenes)
    held, asked = recorded["frames_per_scene"], config.frames_per_scene
    where = (f"{config.output} holds a collection of {len(old)} scene(s) "
             f"({_splits(recorded['scenes'])})")
    if not config.extend:
        differing = []
        if new - old:
            differing.append(f"this run adds {_names(new - old)} ({_splits(sorted(new - old))})")
        if old - new:
            differing.append(f"this run leaves out {_names(old - new)}")
        if asked != held:
            differing.append(f"--frames-per-scene {asked}, the folder's {held}")
        if differing:
            raise CollectError(f"{where}: {'; '.join(differing)}. Rerun with the folder's "
                               "selection to resume, add --extend to add scenes or frames to "
                               "it, or collect into another folder")
    elif asked < held:
        raise CollectError(f"{where} with {held} frames per scene; --extend cannot lower "
                           f"--frames-per-scene to {asked}")
    return sorted(old | new, key=scene_number), asked


def write_annotations(config: CollectConfig, parts: dict[str, dict],
                      only_if_changed: bool = False) -> Path:
    """Merge ``parts`` into DIR/annotations.json (atomically); returns its path. With
    ``only_if_changed`` a file that already holds that merge is left alone."""
    ordered = [parts[s] for s in sorted(parts, key=scene_number)]
    splits: dict[str, list[str]] = {}
    for part in ordered:
        splits.setdefault(part["split"], []).append(part["scene"])
    coco = dict(
        images=[img for p in ordered for img in sorted(p["images"], key=lambda i: i["id"])],
        annotations=[a for p in ordered for a in sorted(p["annotations"], key=lambda a: a["id"])],
        categories=coco_categories(config.classes),
        info={"description": "Ai2Thor iTHOR instance segmentation (saom-train collect)",
              "version": "1", "splits": splits,
              "collector": config.content_settings()
              | {"frames_per_scene": config.frames_per_scene}})
    path = config.output / ANNOTATIONS
    if only_if_changed and _holds(path, coco):
        return path
    with writing(path):
        write_coco(path, **coco)
    return path


def _holds(path: Path, coco: dict) -> bool:
    """Whether the COCO file at ``path`` holds ``coco`` (compared as JSON)."""
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return {k: held.get(k) for k in coco} == json.loads(json.dumps(coco))
