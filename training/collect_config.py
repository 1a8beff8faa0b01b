"""Settings of the Ai2Thor collector: CollectConfig, its checks and the scenes it names."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saom_ros.classes import SAOM_CLASSES
from saom_ros.training.datasets import ROOM_TYPES, ithor_scenes, scene_number

# Image ids are scene_number * FRAME_ID_SPAN + frame, annotation ids image_id * INSTANCE_ID_SPAN
# + k: unique across scenes and runs, and the same in a resumed run.
FRAME_ID_SPAN = 100_000
INSTANCE_ID_SPAN = 1_000
# The camera pitch the simulator's default agent accepts (TeleportFull fails outside it).
HORIZON_LIMITS = (-30.0, 60.0)
# Fields that decide what the frames contain; a resumed run must use the same values.
# frames_per_scene is not one of them: frames are seeded one by one, so a dataset can grow
# (with ``extend``; the folder records its scenes and frames per scene).
CONTENT_FIELDS = ("width", "height", "field_of_view", "grid_size",
                  "horizon_range", "classes", "min_area", "min_instances", "max_pose_attempts",
                  "randomize_materials", "randomize_lighting", "randomize_spawn", "seed")


class CollectError(Exception):
    """The collection cannot go on (bad settings, no simulator, a simulator failure)."""


@dataclass
class CollectConfig:
    """Everything ``collect`` needs. Empty ``scenes`` means the ``room_types`` scenes of ``split``
    (all splits if None)."""

    output: Path
    scenes: tuple[str, ...] = ()
    room_types: tuple[str, ...] = tuple(ROOM_TYPES)
    split: str | None = None
    frames_per_scene: int = 50
    width: int = 640
    height: int = 480
    field_of_view: float = 90.0
    grid_size: float = 0.25
    horizon_range: tuple[float, float] = (-20.0, 50.0)  # degrees, positive looks down
    classes: tuple[str, ...] = SAOM_CLASSES
    min_area: int = 100  # pixels
    min_instances: int = 1  # poses showing fewer kept instances are drawn again
    max_pose_attempts: int = 10  # after that many draws the frame is skipped
    randomize_materials: bool = False
    randomize_lighting: bool = False
    randomize_spawn: bool = False
    seed: int = 0
    extend: bool = False  # add this run's scenes / more frames per scene to the folder's
    workers: int = 1
    checkpoint_every: int = 10  # frames between saves of a scene's part
    simulator_host: str | None = None
    simulator_port: int | None = None
    local_executable_path: str | None = None
    platform: str | None = None
    x_display: str | None = None
    simulator_timeout: float = 100.0  # seconds one action may take
    simulator_start_timeout: float = 300.0  # seconds to wait for the simulator to come up
    progress: bool = True

    def content_settings(self) -> dict[str, Any]:
        """The settings recorded with the data and compared on resume (JSON types)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items() if k in CONTENT_FIELDS}


def resolve_scenes(config: CollectConfig) -> list[str]:
    """The scenes to collect, as ``FloorPlanN`` names sorted by number; ValueError if bad."""
    if config.scenes:
        if config.split is not None:
            raise ValueError("give either scenes or a split, not both (the split picks scenes)")
        scenes = {f"FloorPlan{scene_number(s)}" for s in config.scenes}
    else:
        scenes = set(ithor_scenes(config.room_types, config.split))
    return sorted(scenes, key=scene_number)


def check_config(config: CollectConfig) -> None:
    """ValueError naming every out-of-range setting of ``config`` (as its option and value)."""
    low, high = config.horizon_range
    checks = [
        ("--frames-per-scene", config.frames_per_scene, 1 <= config.frames_per_scene
         <= FRAME_ID_SPAN, f"1..{FRAME_ID_SPAN}"),
        ("--width", config.width, config.width >= 1, ">= 1"),
        ("--height", config.height, config.height >= 1, ">= 1"),
        ("--field-of-view", config.field_of_view, 0 < config.field_of_view < 180,
         "degrees, > 0 and < 180"),
        ("--grid-size", config.grid_size, config.grid_size > 0, "metres, > 0"),
        ("--horizon-range", f"{low:g},{high:g}",
         HORIZON_LIMITS[0] <= low <= high <= HORIZON_LIMITS[1],
         f"MIN <= MAX within {HORIZON_LIMITS[0]:g}..{HORIZON_LIMITS[1]:g} (the simulator "
         "refuses other camera pitches)"),
        ("--room-types", ",".join(config.room_types), bool(config.room_types), "not empty"),
        ("--classes", ",".join(config.classes),
         bool(config.classes) and len(set(config.classes)) == len(config.classes),
         "a non-empty list without repeats"),
        ("--min-area", config.min_area, config.min_area >= 1, "pixels, >= 1"),
        ("--min-instances", config.min_instances, config.min_instances >= 1, ">= 1"),
        ("--max-pose-attempts", config.max_pose_attempts, config.max_pose_attempts >= 1, ">= 1"),
        ("--workers", config.workers, config.workers >= 1, ">= 1"),
        ("--checkpoint-every", config.checkpoint_every, config.checkpoint_every >= 1, ">= 1"),
        ("--simulator-timeout", config.simulator_timeout, config.simulator_timeout > 0,
         "seconds, > 0"),
        ("--simulator-start-timeout", config.simulator_start_timeout,
         config.simulator_start_timeout > 0, "seconds, > 0"),
    ]
    problems = [f"{option} {value!r}: must be {requirement}"
                for option, value, ok, requirement in checks if not ok]
    if problems:
        raise ValueError("; ".join(problems))
