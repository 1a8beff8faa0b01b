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
    DIR/collection.json               the scenes and frames per scene the folder collects

Frame ``i`` of a scene draws its pose from a generator seeded by (seed, scene, i), and object
spawning is seeded by (seed, scene), so a resumed run makes the frames an unbroken run would have
made (material and lighting randomisation excepted: Ai2Thor does not seed them). Files are written
atomically, and a part is saved every ``checkpoint_every`` frames, so an interrupted run loses at
most those frames. A folder keeps the scene selection and frame count it was started with;
``extend`` adds scenes or frames to it. SIGINT and SIGTERM stop the run after merging what
finished. With ``workers`` N, N simulators run in parallel, each on its own shard of the
scenes; with a running simulator, worker k uses port ``simulator_port + k``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from saom_ros.classes import load_class_file
from saom_ros.training.ai2thor_controller import PLATFORMS, controller_kwargs
from saom_ros.training.collect_config import (HORIZON_LIMITS, CollectConfig, CollectError,
                                              check_config, resolve_scenes)
from saom_ros.training.collect_parts import (ANNOTATIONS, claim_folder, existing_parts,
                                             frames_left, load_part, part_path,
                                             write_annotations)
from saom_ros.training.collect_workers import run_shard, run_workers
from saom_ros.training.datasets import ROOM_TYPES, SPLITS

log = logging.getLogger(__name__)


class CollectStopped(BaseException):
    """SIGINT or SIGTERM stopped the collection (a BaseException, as KeyboardInterrupt is, so no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise CollectStopped (once), so the collection unwinds: the simulator
    is stopped and annotations.json merged. A job's time limit sends SIGTERM, Ctrl-C SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python sets handlers only in the main thread
        return
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:  # a second signal must not break the unwinding of the first
            stopping = True
            raise CollectStopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def collect(config: CollectConfig) -> Path:
    """Collect (or resume collecting) the dataset; returns the path of annotations.json."""
    check_config(config)
    config = dataclasses.replace(config, output=Path(config.output))
    scenes = resolve_scenes(config)
    controller_kwargs(config)  # settings errors before any work
    parts = existing_parts(config)
    scenes, frames = claim_folder(config, scenes)
    config = dataclasses.replace(config, frames_per_scene=frames)
    at_start = dict(parts)
    with _stop_signals_raise():
        try:
            errors = _collect_scenes(config, scenes, parts)
        except BaseException:
            failed = _merge_parts(config, parts, at_start)  # keep what finished
            if failed:
                log.error("%s", failed)  # the error on its way says more
            raise
        failed = _merge_parts(config, parts, at_start)
    errors += [failed] if failed else []
    if errors:
        raise CollectError("collection incomplete; fix what is named below and run the same "
                           "command again to resume:\n" + "\n".join(errors))
    if parts and not any(part["images"] for part in parts.values()):
        raise CollectError(f"every frame was skipped ({_frame_count(parts)} in {len(parts)} "
                           "scene(s)); the warnings above say why (e.g. --horizon-range, "
                           "--min-instances, --classes)")
    return config.output / ANNOTATIONS


def _collect_scenes(config: CollectConfig, scenes: list[str], parts: dict[str, dict]
                    ) -> list[str]:
    """Collect the frames ``scenes`` lack, updating ``parts``; returns the errors that stopped
    shards (after the others finished)."""
    todo = [s for s in scenes if frames_left(config, s)]

    def on_scene(scene: str) -> None:
        parts[scene] = load_part(part_path(config.output, scene))
        write_annotations(config, parts)

    if not todo:
        return []
    if config.workers > 1:
        shards = [todo[k::config.workers] for k in range(min(config.workers, len(todo)))]
        return run_workers(config, shards, on_scene)
    try:
        run_shard(config, 0, todo, on_scene)
    except CollectError as err:
        return [str(err)]
    return []


def _merge_parts(config: CollectConfig, parts: dict[str, dict], at_start: dict[str, dict]
                 ) -> str | None:
    """Merge every saved part (an interrupted scene's too) into annotations.json, unless nothing
    changed; returns why that failed (None if it did not), so it masks no other error."""
    try:
        for path in sorted((config.output / "parts").glob("*.json")):
            parts[path.stem] = load_part(path)
        if parts:
            write_annotations(config, parts, only_if_changed=parts == at_start)
    except CollectError as err:
        return str(err)
    return None


def _frame_count(parts: dict[str, dict]) -> int:
    return sum(len(part["frames_done"]) for part in parts.values())


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


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
                      help="camera pitch MIN,MAX in degrees, positive looks down, within "
                           f"{HORIZON_LIMITS[0]:g}..{HORIZON_LIMITS[1]:g} (default "
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
    what.add_argument("--extend", action="store_true",
                      help="add this run's scenes (and a higher --frames-per-scene) to the "
                           "collection in --output; without it a folder only resumes its own "
                           "selection")
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
    except CollectStopped as stop:
        print(f"saom-train collect: {stop}; what finished is in {args.output / ANNOTATIONS}; run "
              "the same command again to resume", file=sys.stderr)
        return 128 + stop.signum
    print(f"wrote {path}")
    return 0
