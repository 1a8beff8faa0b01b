"""Collect a COCO instance-segmentation dataset from Ai2Thor iTHOR scenes (``saom-train collect``).

The collector drives the real ``ai2thor.controller.Controller``. The simulator is either one that
already runs (``--simulator-host/--simulator-port``: the Controller's WSGI server listens there and
the simulator connects to it; start a Unity build with ``AI2THOR_HOST``, ``AI2THOR_PORT`` and
``AI2THOR_SERVER_TYPE=WSGI``), a local build (``--local-executable-path``, shown on an X display),
or Ai2Thor's pinned build (``--platform CloudRendering`` or ``Linux64``; downloaded on first use).

For every scene it places the agent at random reachable positions with random yaw and camera
horizon and keeps the instances of the configured classes that cover at least ``min_area``
pixels. Output layout::

    DIR/annotations.json              COCO file (images, annotations with RLE masks, categories)
    DIR/images/<scene>/<frame>.png    the frames
    DIR/parts/<scene>.json            per-scene progress; annotations.json merges them

Frame ``i`` of a scene draws its pose from a generator seeded by (seed, scene, i), and object
spawning is seeded by (seed, scene), so a resumed run makes the frames an unbroken run would have
made (material and lighting randomisation excepted: Ai2Thor does not seed them). Files are written
atomically, and a part is saved every ``checkpoint_every`` frames, so an interrupted run loses at
most those frames. With ``workers`` N, N simulators run in parallel, each on its own shard of the
scenes; with a running simulator, worker k uses port ``simulator_port + k``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from saom_ros.classes import SAOM_CLASSES, load_class_file
from saom_ros.training.datasets import (ROOM_TYPES, SPLITS, atomic_write_json, coco_categories,
                                        ithor_scenes, ithor_split, mask_to_annotation,
                                        scene_number, write_coco, write_image)
from saom_ros.training.process_lifetime import die_with_parent

log = logging.getLogger(__name__)

PLATFORMS = ("CloudRendering", "Linux64")
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


# ---------------------------------------------------------------------------------------------
# Settings checks and the simulator connection
# ---------------------------------------------------------------------------------------------

def resolve_scenes(config: CollectConfig) -> list[str]:
    """The scenes to collect, as ``FloorPlanN`` names sorted by number; ValueError if bad."""
    if config.scenes:
        if config.split is not None:
            raise ValueError("give either scenes or a split, not both (the split picks scenes)")
        scenes = {f"FloorPlan{scene_number(s)}" for s in config.scenes}
    else:
        scenes = set(ithor_scenes(config.room_types, config.split))
    return sorted(scenes, key=scene_number)


def _check(config: CollectConfig) -> None:
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


def controller_kwargs(config: CollectConfig, worker: int = 0) -> dict[str, Any]:
    """Keyword arguments of ``ai2thor.controller.Controller`` for ``worker``; ValueError if the
    simulator settings contradict each other, CollectError if a local build is missing."""
    import ai2thor.platform
    import ai2thor.wsgi_server

    # WSGI in every mode: ai2thor's default FifoServer blocks forever on a build that crashes
    # before it opens its pipe, while the WSGI server notices the process has exited.
    kwargs: dict[str, Any] = dict(
        width=config.width, height=config.height, renderInstanceSegmentation=True,
        fieldOfView=config.field_of_view, gridSize=config.grid_size,
        server_class=ai2thor.wsgi_server.WsgiServer, server_timeout=config.simulator_timeout,
        server_start_timeout=config.simulator_start_timeout)
    running = config.simulator_host is not None or config.simulator_port is not None
    chosen = [name for name, on in (("--simulator-host/--simulator-port", running),
                                    ("--local-executable-path", config.local_executable_path),
                                    ("--platform", config.platform)) if on]
    if len(chosen) != 1:
        raise ValueError(
            "say how to reach the simulator with exactly one of --simulator-host/--simulator-port "
            "(a running simulator), --local-executable-path (a local build) or --platform "
            f"{'|'.join(PLATFORMS)} (Ai2Thor's build, downloaded on first use); got "
            f"{', '.join(chosen) or 'none'}")
    if running:
        if config.simulator_port is None:
            raise ValueError("--simulator-host needs --simulator-port")
        if config.x_display is not None:
            raise ValueError("--x-display applies to a simulator the collector starts, not to a "
                             "running one")
        # The Controller's WSGI server listens; the simulator connects to it.
        return kwargs | dict(start_unity=False, host=config.simulator_host or "127.0.0.1",
                             port=config.simulator_port + worker)
    if config.local_executable_path:
        path = Path(config.local_executable_path)
        if not path.is_file():
            raise CollectError(f"Ai2Thor build {path} does not exist (--local-executable-path "
                               "names the build's executable)")
        if not os.access(path, os.X_OK):
            raise CollectError(f"Ai2Thor build {path} is not executable")
        return kwargs | dict(local_executable_path=str(path), x_display=config.x_display)
    if config.platform not in PLATFORMS:
        raise ValueError(f"unknown platform {config.platform!r}; known: {', '.join(PLATFORMS)}")
    extra = {"x_display": config.x_display} if config.platform == "Linux64" else {}
    return kwargs | dict(platform=getattr(ai2thor.platform, config.platform)) | extra


def _describe(kwargs: dict[str, Any]) -> str:
    if kwargs.get("start_unity") is False:
        return f"the running simulator expected to connect to {kwargs['host']}:{kwargs['port']}"
    if "local_executable_path" in kwargs:
        return f"the local build {kwargs['local_executable_path']}"
    return f"Ai2Thor's {kwargs['platform'].name()} build"


def _has_x_display(config: CollectConfig) -> bool:
    import ai2thor.platform

    if config.x_display or os.environ.get("DISPLAY"):
        return True
    # What ai2thor itself falls back to: X servers it finds on this machine.
    return bool(ai2thor.platform.Linux64._valid_x_displays(config.width, config.height))


def open_controller(config: CollectConfig, worker: int, first_scene: str):
    """A started Controller in ``first_scene`` rendering at the configured size."""
    import ai2thor.platform
    from ai2thor.controller import Controller

    kwargs = controller_kwargs(config, worker)
    needs_x = ("local_executable_path" in kwargs
               or kwargs.get("platform") is ai2thor.platform.Linux64)
    if needs_x and not _has_x_display(config):
        raise CollectError(f"{_describe(kwargs)} renders on an X server and none was found: give "
                           "--x-display, set DISPLAY, start one (sudo ai2thor-xorg start) or use "
                           "--platform CloudRendering")
    try:
        controller = Controller(scene=first_scene, **kwargs)
    except TimeoutError:
        raise CollectError(f"no answer from {_describe(kwargs)} within "
                           f"{config.simulator_start_timeout:g} s") from None
    except Exception as err:  # ai2thor raises bare Exceptions for missing builds and platforms
        hint = ("; Ai2Thor downloads its build into ~/.ai2thor/releases on first use, so offline "
                "use --local-executable-path or a running simulator" if "platform" in kwargs
                else "")
        raise CollectError(f"could not start {_describe(kwargs)}: {err}{hint}") from err
    return controller


def close_controller(controller) -> None:
    """Stop the controller and free its port (ai2thor's WsgiServer.stop leaves it listening)."""
    import ai2thor.wsgi_server

    try:
        controller.stop()
    except Exception as err:  # the simulator may be gone already
        log.debug("stopping the controller: %s", err)
    server = controller.server
    if isinstance(server, ai2thor.wsgi_server.WsgiServer):
        # shutdown() waits for the serving loop, which a request stuck on a dead simulator could
        # block; don't wait for long.
        stopper = threading.Thread(target=server.wsgi_server.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=2.0)
        server.wsgi_server.server_close()


# ---------------------------------------------------------------------------------------------
# One scene
# ---------------------------------------------------------------------------------------------

def _step(controller, action: str, **args):
    """``controller.step`` with failures (of the simulator or the action) as CollectError."""
    try:
        return controller.step(action=action, raise_for_failure=True, **args)
    except (TimeoutError, RuntimeError, ValueError) as err:
        scene = controller.last_event.metadata.get("sceneName") if controller.last_event else "?"
        raise CollectError(f"Ai2Thor action {action} failed in scene {scene}: {err}") from err


def _reset(controller, config: CollectConfig, scene: str) -> None:
    try:
        event = controller.reset(scene)
    except (TimeoutError, RuntimeError, ValueError) as err:
        raise CollectError(f"could not load scene {scene}: {err}") from err
    # A simulator that was already running keeps its own resolution; the Controller only fixes
    # the size of builds it starts itself.
    if (event.screen_width, event.screen_height) != (config.width, config.height):
        event = _step(controller, "ChangeResolution", x=config.width, y=config.height)
    if (event.screen_width, event.screen_height) != (config.width, config.height):
        raise CollectError(f"the simulator renders {event.screen_width}x{event.screen_height} "
                           f"after ChangeResolution to {config.width}x{config.height}")


def spawn_seed(config: CollectConfig, scene: str) -> int:
    """``InitialRandomSpawn`` seed of ``scene`` (a 31-bit int, as Unity's seed is)."""
    return int(np.random.default_rng([config.seed, scene_number(scene)]).integers(2**31 - 1))


def kept_instances(event, class_ids: dict[str, int], min_area: int
                   ) -> list[tuple[str, int, np.ndarray]]:
    """(objectId, class id, mask) of the instances of known classes covering >= min_area pixels,
    in objectId order."""
    if event.frame is None or event.instance_segmentation_frame is None:
        raise CollectError("the simulator sent no image or no instance segmentation "
                           "(renderInstanceSegmentation)")
    types = {o["objectId"]: o["objectType"] for o in event.metadata["objects"]}
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
        _step(controller, "RandomizeMaterials", useTrainMaterials=split == "train",
              useValMaterials=split == "val", useTestMaterials=split == "test")
    if config.randomize_lighting:
        _step(controller, "RandomizeLighting", brightness=(0.5, 1.5), randomizeColor=True,
              hue=(0.0, 1.0), saturation=(0.5, 1.0), synchronized=False)


def _capture(controller, config: CollectConfig, scene: str, index: int, positions: list[dict],
             class_ids: dict[str, int]):
    """(event, instances) of frame ``index``, or None if no pose showed enough instances."""
    rng = np.random.default_rng([config.seed, scene_number(scene), index])
    for _ in range(config.max_pose_attempts):
        position = positions[int(rng.integers(len(positions)))]
        yaw = round(float(rng.uniform(0.0, 360.0)), 2)
        horizon = round(float(rng.uniform(*config.horizon_range)), 2)
        event = controller.step(action="TeleportFull", x=position["x"], y=position["y"],
                                z=position["z"], rotation={"x": 0.0, "y": yaw, "z": 0.0},
                                horizon=horizon, standing=True)
        if not event.metadata["lastActionSuccess"]:
            continue
        instances = kept_instances(event, class_ids, config.min_area)
        if len(instances) >= config.min_instances:
            return event, instances
    return None


def _frame_record(config: CollectConfig, scene: str, split: str, index: int, event,
                  instances) -> tuple[dict, list[dict]]:
    image_id = scene_number(scene) * FRAME_ID_SPAN + index
    if len(instances) >= INSTANCE_ID_SPAN:
        raise CollectError(f"{scene} frame {index} has {len(instances)} instances; at most "
                           f"{INSTANCE_ID_SPAN - 1} fit the annotation ids")
    file_name = f"images/{scene}/{index:06d}.png"
    write_image(config.output / file_name, event.frame)
    agent = event.metadata["agent"]
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


def part_path(output: Path, scene: str) -> Path:
    return output / "parts" / f"{scene}.json"


def _load_part(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CollectError(f"progress file {path} is unreadable ({err}); delete it to collect "
                           "that scene again") from None


def _frames_left(config: CollectConfig, scene: str) -> int:
    path = part_path(config.output, scene)
    done = set(_load_part(path)["frames_done"]) if path.exists() else set()
    return sum(i not in done for i in range(config.frames_per_scene))


def collect_scene(controller, config: CollectConfig, scene: str,
                  on_frame: Callable[[], None] = lambda: None) -> dict:
    """Collect the frames of ``scene`` that its part file lacks; returns the finished part."""
    path = part_path(config.output, scene)
    split = ithor_split(scene)
    part = _load_part(path) if path.exists() else {
        "scene": scene, "split": split, "settings": config.content_settings(),
        "frames_done": [], "skipped_frames": [], "images": [], "annotations": []}
    done = set(part["frames_done"])
    todo = [i for i in range(config.frames_per_scene) if i not in done]
    if not todo:
        return part
    class_ids = {name: i + 1 for i, name in enumerate(config.classes)}
    _reset(controller, config, scene)
    if config.randomize_spawn:
        _step(controller, "InitialRandomSpawn", randomSeed=spawn_seed(config, scene),
              forceVisible=True, numPlacementAttempts=5, placeStationary=True)
    positions = _step(controller, "GetReachablePositions").metadata["actionReturn"] or []
    if not positions:
        raise CollectError(f"scene {scene} has no reachable positions")
    positions = sorted(positions, key=lambda p: (p["x"], p["z"], p["y"]))
    for n, index in enumerate(todo, 1):
        _randomize(controller, config, split)
        try:
            captured = _capture(controller, config, scene, index, positions, class_ids)
        except (TimeoutError, RuntimeError, ValueError) as err:
            raise CollectError(f"the simulator failed in scene {scene} frame {index}: {err}") \
                from err
        if captured is None:
            log.warning("%s frame %d: no pose in %d attempts showed %d instance(s); skipped",
                        scene, index, config.max_pose_attempts, config.min_instances)
            part["skipped_frames"].append(index)
        else:
            image, annotations = _frame_record(config, scene, split, index, *captured)
            part["images"].append(image)
            part["annotations"].extend(annotations)
        part["frames_done"].append(index)
        on_frame()
        if n % config.checkpoint_every == 0 or n == len(todo):
            atomic_write_json(path, part)
    return part


# ---------------------------------------------------------------------------------------------
# Shards, workers and the merged file
# ---------------------------------------------------------------------------------------------

def _existing_parts(config: CollectConfig) -> dict[str, dict]:
    """Parts already in the output folder; CollectError if they were made with other settings."""
    parts = {}
    settings = config.content_settings()
    for path in sorted((config.output / "parts").glob("*.json")):
        part = _load_part(path)
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


def _run_shard(config: CollectConfig, worker: int, scenes: Sequence[str],
               on_scene: Callable[[str], None]) -> None:
    """Collect ``scenes`` with one simulator, calling ``on_scene`` after each finished scene."""
    with tqdm(total=sum(_frames_left(config, s) for s in scenes), desc=f"worker {worker}",
              position=worker, unit="frame", disable=not config.progress or None,
              leave=False) as bar:
        controller = open_controller(config, worker, scenes[0])
        try:
            for scene in scenes:
                collect_scene(controller, config, scene, on_frame=lambda: bar.update())
                on_scene(scene)
        finally:
            close_controller(controller)


def _on_terminate(signum: int, frame: object) -> None:
    """SIGTERM (the parent died, or stopped this worker): unwind so the simulator is stopped."""
    signal.alarm(10)  # SIGALRM's default action ends the process should stopping hang
    raise SystemExit(f"collector worker stopped by signal {signum}")


def _worker_main(config: CollectConfig, worker: int, scenes: list[str], messages,
                 parent_pid: int) -> None:
    signal.signal(signal.SIGTERM, _on_terminate)
    die_with_parent(parent_pid, signal.SIGTERM)  # even a SIGKILLed parent ends its workers
    try:
        _run_shard(config, worker, scenes, lambda scene: messages.put(("scene", worker, scene)))
        messages.put(("done", worker, ""))
    except BaseException as err:  # reported to the parent, which decides
        detail = str(err) if isinstance(err, (CollectError, ValueError)) \
            else traceback.format_exc()
        messages.put(("error", worker, detail))


def _run_workers(config: CollectConfig, shards: list[list[str]],
                 on_scene: Callable[[str], None]) -> list[str]:
    """Run one process per shard; returns the errors of the workers that failed."""
    context = multiprocessing.get_context("spawn")  # no forked copies of threads or sockets
    messages = context.Queue()
    parent = os.getpid()
    processes = [context.Process(target=_worker_main, args=(config, k, shard, messages, parent),
                                 name=f"collect-worker-{k}", daemon=True)
                 for k, shard in enumerate(shards)]
    for process in processes:
        process.start()
    errors, running = [], len(processes)
    try:
        while running:
            try:
                kind, worker, payload = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [k for k, p in enumerate(processes) if p.exitcode not in (None, 0)]
                if dead and all(p.exitcode is not None for p in processes):
                    errors += [f"worker {k} exited with code {processes[k].exitcode}"
                               for k in dead]
                    break
                continue
            if kind == "scene":
                on_scene(payload)
            else:
                running -= 1
                if kind == "error":
                    errors.append(f"worker {worker}: {payload}")
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    return errors


def collect(config: CollectConfig) -> Path:
    """Collect (or resume collecting) the dataset; returns the path of annotations.json."""
    _check(config)
    config = dataclasses.replace(config, output=Path(config.output))
    scenes = resolve_scenes(config)
    controller_kwargs(config)  # settings errors before any work
    config.output.mkdir(parents=True, exist_ok=True)
    parts = _existing_parts(config)
    todo = [s for s in scenes if _frames_left(config, s)]

    def on_scene(scene: str) -> None:
        parts[scene] = _load_part(part_path(config.output, scene))
        write_annotations(config, parts)

    errors: list[str] = []
    try:
        if todo and config.workers == 1:
            _run_shard(config, 0, todo, on_scene)
        elif todo:
            shards = [todo[k::config.workers] for k in range(min(config.workers, len(todo)))]
            errors = _run_workers(config, shards, on_scene)
    finally:
        # Whatever finished (parts of an interrupted scene too) is in annotations.json.
        for path in (config.output / "parts").glob("*.json"):
            parts[path.stem] = _load_part(path)
        path = write_annotations(config, parts)
    if errors:
        raise CollectError("collection incomplete; run the same command again to resume:\n"
                           + "\n".join(errors))
    return path


# ---------------------------------------------------------------------------------------------
# Command line (training/cli.py mounts this as ``saom-train collect``)
# ---------------------------------------------------------------------------------------------

def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}") from None
    return low, high


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``collect`` options to ``parser``."""
    d = CollectConfig(output=Path("."))
    parser.add_argument("--output", type=Path, required=True,
                        help="dataset folder (DIR/annotations.json, DIR/images/); resumes if it "
                             "holds a partial collection")
    what = parser.add_argument_group("what to collect")
    what.add_argument("--scenes", type=_names, default=d.scenes,
                      help="comma-separated iTHOR scenes (FloorPlan1,FloorPlan201); default: all "
                           "scenes of --room-types in --split")
    what.add_argument("--room-types", type=_names, default=d.room_types,
                      help=f"comma-separated, of {','.join(ROOM_TYPES)} (default all)")
    what.add_argument("--split", choices=SPLITS, default=d.split,
                      help="scenes 1-20 of each room type are train, 21-25 val, 26-30 test "
                           "(default: all)")
    what.add_argument("--frames-per-scene", type=int, default=d.frames_per_scene,
                      help="frames per scene (default %(default)s)")
    what.add_argument("--width", type=int, default=d.width, help="pixels (default %(default)s)")
    what.add_argument("--height", type=int, default=d.height, help="pixels (default %(default)s)")
    what.add_argument("--field-of-view", type=float, default=d.field_of_view,
                      help="vertical, degrees (default %(default)s)")
    what.add_argument("--grid-size", type=float, default=d.grid_size,
                      help="spacing of reachable positions, metres (default %(default)s)")
    what.add_argument("--horizon-range", type=_range, default=d.horizon_range,
                      help="camera pitch MIN,MAX in degrees, positive looks down (default "
                           f"{d.horizon_range[0]:g},{d.horizon_range[1]:g})")
    classes = what.add_mutually_exclusive_group()
    classes.add_argument("--classes", type=_names, default=d.classes,
                         help="comma-separated Ai2Thor objectTypes to keep (default: the SAOM "
                              "classes)")
    classes.add_argument("--class-file", type=Path,
                         help="YAML class list (classes: [...]) instead of --classes")
    what.add_argument("--min-area", type=int, default=d.min_area,
                      help="smallest instance kept, pixels (default %(default)s)")
    what.add_argument("--min-instances", type=int, default=d.min_instances,
                      help="draw another pose when a view shows fewer kept instances "
                           "(default %(default)s)")
    what.add_argument("--max-pose-attempts", type=int, default=d.max_pose_attempts,
                      help="pose draws per frame before it is skipped (default %(default)s)")
    what.add_argument("--randomize-materials", action="store_true",
                      help="new materials (of the scene's split) for every frame")
    what.add_argument("--randomize-lighting", action="store_true",
                      help="new lighting for every frame")
    what.add_argument("--randomize-spawn", action="store_true",
                      help="move objects once per scene (InitialRandomSpawn, seeded)")
    what.add_argument("--seed", type=int, default=d.seed,
                      help="seeds poses and spawns (default %(default)s)")
    run_group = parser.add_argument_group("how to run")
    run_group.add_argument("--workers", type=int, default=d.workers,
                           help="parallel simulators, each on its own shard of the scenes "
                                "(default %(default)s)")
    run_group.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                           help="frames between progress saves (default %(default)s)")
    run_group.add_argument("--no-progress", dest="progress", action="store_false")
    sim = parser.add_argument_group(
        "simulator (exactly one of: a running simulator, a local build, a platform)")
    sim.add_argument("--simulator-host", help="connect to a running simulator: the collector "
                                              "listens on HOST:PORT and the simulator connects")
    sim.add_argument("--simulator-port", type=int,
                     help="first port; worker k listens on PORT+k")
    sim.add_argument("--local-executable-path", help="start this Ai2Thor Unity build")
    sim.add_argument("--platform", choices=PLATFORMS,
                     help="start Ai2Thor's pinned build on this platform (downloaded on first "
                          "use; CloudRendering renders offscreen with Vulkan)")
    sim.add_argument("--x-display", help="X display for a build the collector starts, e.g. :0")
    sim.add_argument("--simulator-timeout", type=float, default=d.simulator_timeout,
                     help="seconds one simulator action may take (default %(default)s)")
    sim.add_argument("--simulator-start-timeout", type=float, default=d.simulator_start_timeout,
                     help="seconds to wait for the simulator to come up or connect "
                          "(default %(default)s)")


def config_from_args(args: argparse.Namespace) -> CollectConfig:
    """The CollectConfig of parsed ``collect`` arguments."""
    names = {f.name for f in dataclasses.fields(CollectConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if getattr(args, "class_file", None) is not None:
        values["classes"] = load_class_file(args.class_file)
    return CollectConfig(**values)


def run(args: argparse.Namespace) -> int:
    """``saom-train collect``: 0 on success, 1 if the collection failed, 2 for bad settings."""
    try:
        path = collect(config_from_args(args))
    except ValueError as err:
        print(f"saom-train collect: error: {err}", file=sys.stderr)
        return 2
    except CollectError as err:
        print(f"saom-train collect: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
