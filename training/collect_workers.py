"""Running shards of scenes: one simulator per shard, in this process or in worker processes."""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import traceback
from typing import Callable, Sequence

from tqdm import tqdm

from saom_ros.training.ai2thor_controller import close_controller, open_controller
from saom_ros.training.ai2thor_scene import collect_scene
from saom_ros.training.collect_config import CollectConfig, CollectError
from saom_ros.training.collect_parts import frames_left
from saom_ros.training.process_lifetime import die_with_parent


def run_shard(config: CollectConfig, worker: int, scenes: Sequence[str],
              on_scene: Callable[[str], None]) -> None:
    """Collect ``scenes`` with one simulator, calling ``on_scene`` after each finished scene."""
    with tqdm(total=sum(frames_left(config, s) for s in scenes), desc=f"worker {worker}",
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
        run_shard(config, worker, scenes, lambda scene: messages.put(("scene", worker, scene)))
        messages.put(("done", worker, ""))
    except BaseException as err:  # reported to the parent, which decides
        detail = str(err) if isinstance(err, (CollectError, ValueError)) \
            else traceback.format_exc()
        messages.put(("error", worker, detail))


def run_workers(config: CollectConfig, shards: list[list[str]],
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
        if running:  # stopped early (a stop signal, a dead worker): end the workers' collecting
            for process in processes:
                if process.is_alive():
                    process.terminate()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    return errors
