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
# Fields that decide what the frames contain; a resumed run must use the same values.
# frames_per_scene is not one of them: frames are seeded one by one, so a dataset can grow.
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
    """ValueError naming every out-of-range setting of ``config``."""
    problems = []
    if config.frames_per_scene < 1 or config.frames_per_scene > FRAME_ID_SPAN:
        problems.append(f"frames per scene must be 1..{FRAME_ID_SPAN}")
    if config.width < 1 or config.height < 1:
        problems.append("width and height must be positive")
    low, high = config.horizon_range
    if not -90 <= low <= high <= 90:
        problems.append(f"horizon range {config.horizon_range} must be MIN <= MAX within -90..90")
    if not config.classes or len(set(config.classes)) != len(config.classes):
        problems.append("classes must be a non-empty list without repeats")
    if config.workers < 1 or config.checkpoint_every < 1 or config.max_pose_attempts < 1:
        problems.append("workers, checkpoint_every and max_pose_attempts must be >= 1")
    if problems:
        raise ValueError("; ".join(problems))
