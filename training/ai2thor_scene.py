"""Collecting one Ai2Thor scene: seeded poses, randomisation, frames and their COCO records."""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from saom_ros.training.ai2thor_controller import (MalformedEvent, describe, reset_scene,
                                                  simulator_errors, step)
from saom_ros.training.collect_config import (FRAME_ID_SPAN, INSTANCE_ID_SPAN, CollectConfig,
                                              CollectError)
from saom_ros.training.collect_parts import load_part, part_path, writing
from saom_ros.training.coco_masks import mask_to_annotation
from saom_ros.training.datasets import atomic_write_json, ithor_split, scene_number, write_image

log = logging.getLogger(__name__)


def spawn_seed(config: CollectConfig, scene: str) -> int:
    """``InitialRandomSpawn`` seed of ``scene`` (a 31-bit int, as Unity's seed is)."""
    return int(np.random.default_rng([config.seed, scene_number(scene)]).integers(2**31 - 1))


def _metadata(event, key: str):
    """``event.metadata[key]``; MalformedEvent if the simulator left it out."""
    if key not in event.metadata:
        raise MalformedEvent(f"the simulator's metadata has no {key!r}")
    return event.metadata[key]


def kept_instances(event, class_ids: dict[str, int], min_area: int
                   ) -> list[tuple[str, int, np.ndarray]]:
    """(objectId, class id, mask) of the instances of known classes covering >= min_area pixels,
    in objectId order."""
    if event.frame is None or event.instance_segmentation_frame is None:
        raise MalformedEvent("the simulator sent no image or no instance segmentation "
                             "(renderInstanceSegmentation)")
    try:
        types = {o["objectId"]: o["objectType"] for o in _metadata(event, "objects")}
    except (KeyError, TypeError):
        raise MalformedEvent("the simulator's metadata 'objects' are not objects with "
                             "objectId and objectType") from None
    kept = []
    for object_id in sorted(event.instance_masks):
        class_id = class_ids.get(types.get(object_id, object_id.split("|")[0]))
        if class_id is None:
            continue
        mask = event.instance_masks[object_id]
        if int(mask.sum()) >= min_area:
            kept.append((object_id, class_id, mask))
    return kept


def _randomize(controller, config: CollectConfig, split: str) -> None:
    if config.randomize_materials:
        # Materials of the scene's own split, as the iTHOR documentation splits them.
        step(controller, "RandomizeMaterials", useTrainMaterials=split == "train",
             useValMaterials=split == "val", useTestMaterials=split == "test")
    if config.randomize_lighting:
        step(controller, "RandomizeLighting", brightness=(0.5, 1.5), randomizeColor=True,
             hue=(0.0, 1.0), saturation=(0.5, 1.0), synchronized=False)


def _capture(controller, config: CollectConfig, scene: str, index: int, positions: list[dict],
             class_ids: dict[str, int]):
    """(event, instances) of frame ``index``, or (None, why) if no pose showed enough instances."""
    rng = np.random.default_rng([config.seed, scene_number(scene), index])
    why = f"no pose showed {config.min_instances} instance(s)"
    for _ in range(config.max_pose_attempts):
        position = positions[int(rng.integers(len(positions)))]
        yaw = round(float(rng.uniform(0.0, 360.0)), 2)
        horizon = round(float(rng.uniform(*config.horizon_range)), 2)
        event = controller.step(action="TeleportFull", x=position["x"], y=position["y"],
                                z=position["z"], rotation={"x": 0.0, "y": yaw, "z": 0.0},
                                horizon=horizon, standing=True)
        if not _metadata(event, "lastActionSuccess"):
            # Why the simulator refused the pose: the skip warning shows the last such reason.
            why = f"the last TeleportFull failed: {event.metadata.get('errorMessage') or '?'}"
            continue
        instances = kept_instances(event, class_ids, config.min_area)
        if len(instances) >= config.min_instances:
            return event, instances
    return None, why


def _frame_record(config: CollectConfig, scene: str, split: str, index: int, event,
                  instances) -> tuple[dict, list[dict]]:
    image_id = scene_number(scene) * FRAME_ID_SPAN + index
    if len(instances) >= INSTANCE_ID_SPAN:
        raise CollectError(f"{scene} frame {index} has {len(instances)} instances; at most "
                           f"{INSTANCE_ID_SPAN - 1} fit the annotation ids")
    agent = _metadata(event, "agent")
    file_name = f"images/{scene}/{index:06d}.png"
    with writing(config.output / file_name):
        write_image(config.output / file_name, event.frame)
    image = {
        "id": image_id, "file_name": file_name, "width": config.width, "height": config.height,
        "scene": scene, "split": split, "frame_index": index,
        "agent": {"position": agent["position"], "rotation": agent["rotation"],
                  "cameraHorizon": agent["cameraHorizon"],
                  "isStanding": agent.get("isStanding", True)},
        "randomization": {"materials": config.randomize_materials,
                          "lighting": config.randomize_lighting,
                          "spawn_seed": spawn_seed(config, scene) if config.randomize_spawn
                          else None},
    }
    annotations = [mask_to_annotation(mask, image_id * INSTANCE_ID_SPAN + k, image_id, class_id,
                                      object_id=object_id)
                   for k, (object_id, class_id, mask) in enumerate(instances)]
    return image, annotations


def collect_scene(controller, config: CollectConfig, scene: str,
                  on_frame: Callable[[], None] = lambda: None) -> dict:
    """Collect the frames of ``scene`` that its part file lacks; returns the finished part."""
    path = part_path(config.output, scene)
    split = ithor_split(scene)
    part = load_part(path) if path.exists() else {
        "scene": scene, "split": split, "settings": config.content_settings(),
        "frames_done": [], "skipped_frames": [], "images": [], "annotations": []}
    done = set(part["frames_done"])
    todo = [i for i in range(config.frames_per_scene) if i not in done]
    if not todo:
        return part
    class_ids = {name: i + 1 for i, name in enumerate(config.classes)}
    reset_scene(controller, config, scene)
    if config.randomize_spawn:
        step(controller, "InitialRandomSpawn", randomSeed=spawn_seed(config, scene),
             forceVisible=True, numPlacementAttempts=5, placeStationary=True)
    positions = step(controller, "GetReachablePositions").metadata["actionReturn"] or []
    if not positions:
        raise CollectError(f"scene {scene} has no reachable positions")
    positions = sorted(positions, key=lambda p: (p["x"], p["z"], p["y"]))
    for n, index in enumerate(todo, 1):
        _randomize(controller, config, split)
        try:
            event, found = _capture(controller, config, scene, index, positions, class_ids)
            record = _frame_record(config, scene, split, index, event, found) if event else None
        except simulator_errors() as err:
            raise CollectError(f"the simulator failed in scene {scene} frame {index}: "
                               f"{describe(err)}") from err
        if record is None:
            log.warning("%s frame %d: skipped after %d pose attempts: %s", scene, index,
                        config.max_pose_attempts, found)
            part["skipped_frames"].append(index)
        else:
            part["images"].append(record[0])
            part["annotations"].extend(record[1])
        part["frames_done"].append(index)
        on_frame()
        if n % config.checkpoint_every == 0 or n == len(todo):
            with writing(path):
                atomic_write_json(path, part)
    return part
