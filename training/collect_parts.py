"""Per-scene progress files (DIR/parts/<scene>.json) and their merge into annotations.json."""
from __future__ import annotations

import json
from pathlib import Path

from saom_ros.training.collect_config import CollectConfig, CollectError
from saom_ros.training.datasets import coco_categories, scene_number, write_coco


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


def write_annotations(config: CollectConfig, parts: dict[str, dict]) -> Path:
    """Merge ``parts`` into DIR/annotations.json (atomically); returns its path."""
    ordered = [parts[s] for s in sorted(parts, key=scene_number)]
    splits: dict[str, list[str]] = {}
    for part in ordered:
        splits.setdefault(part["split"], []).append(part["scene"])
    path = config.output / "annotations.json"
    write_coco(path,
               images=[img for p in ordered for img in sorted(p["images"], key=lambda i: i["id"])],
               annotations=[a for p in ordered
                            for a in sorted(p["annotations"], key=lambda a: a["id"])],
               categories=coco_categories(config.classes),
               info={"description": "Ai2Thor iTHOR instance segmentation (saom-train collect)",
                     "version": "1", "splits": splits,
                     "collector": config.content_settings()
                     | {"frames_per_scene": config.frames_per_scene}})
    return path
