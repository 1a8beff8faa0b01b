"""The bench/ scripts answer bad arguments, and CUDA on a machine without it, with one error line
(argparse's, exit status 2) before they build, load or train a model: no traceback, no wait.

Slow: each script spends seconds of CPU importing torch and saom_ros (15 of them: over a minute
on 2 cores)."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Scripts run at a time: each holds about 1 GB once torch is imported.
PARALLEL = min(os.cpu_count() or 1, 4)
# Far above a script's imports on a loaded machine, far below a model fit or a benchmark run.
TIMEOUT_S = 90


class Case(NamedTuple):
    script: str
    args: tuple[str, ...]
    problem: str  # what the last line of stderr must name
    status: int = 2  # argparse's usage error


ARGUMENT_CASES = {
    "amg_missing_checkpoint": Case("everything_vs_amg.py", ("--checkpoint", "/nonexistent.pt",
                                                            "--no-amg"), "/nonexistent.pt"),
    "modes_missing_checkpoint": Case("everything_modes.py", ("--checkpoint", "/nonexistent.pt"),
                                     "/nonexistent.pt"),
    "modes_no_scenes": Case("everything_modes.py", ("--scenes", "0", "--sequences", "0"),
                            "--scenes"),
    "gpu_matrix_bad_size": Case("everything_gpu_matrix.py", ("--sizes", "640x48O"), "640x48O"),
    "gpu_matrix_bad_model": Case("everything_gpu_matrix.py", ("--models", "vit_q"), "vit_q"),
    "train_bad_model": Case("train_throughput.py", ("--model-type", "vit_x"), "vit_x"),
    "node_overhead_no_frames": Case("node_overhead.py", ("--frames", "0"), "--frames"),
    "depth_tracking_no_frames": Case("depth_tracking_overhead.py", ("--frames", "0"), "--frames"),
    "frame_delivery_bad_size": Case("frame_delivery.py", ("--sizes", "640x48O"), "640x48O"),
    "frame_delivery_bad_load": Case("frame_delivery.py", ("--loads", "busy"), "busy"),
    "gpu_matrix_no_runs": Case("everything_gpu_matrix.py", ("--runs", "0"), "--runs"),
    "train_no_images": Case("train_throughput.py", ("--images", "0"), "--images"),
    "modes_other_device": Case("everything_modes.py", ("--device", "meta"), "cpu or cuda"),
}
NO_CUDA = "needs a CUDA device"
CUDA_CASES = {
    "amg_cuda": Case("everything_vs_amg.py", ("--device", "cuda"), NO_CUDA),
    "modes_cuda": Case("everything_modes.py", ("--device", "cuda"), NO_CUDA),
    "gpu_matrix_cuda": Case("everything_gpu_matrix.py", ("--device", "cuda"), NO_CUDA),
    "train_cuda": Case("train_throughput.py", ("--device", "cuda"), NO_CUDA),
    "cleanup_gpu": Case("engine_cleanup_gpu.py", (), NO_CUDA, status=1),  # needs CUDA, no flag
}
HAS_CUDA = torch.cuda.is_available()


def _run(case: Case) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / case.script), *case.args],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Future]]:
    """Every case's process (all of them, whichever tests run), PARALLEL at a time."""
    cases = ARGUMENT_CASES if HAS_CUDA else {**ARGUMENT_CASES, **CUDA_CASES}
    with ThreadPoolExecutor(PARALLEL) as pool:
        yield {name: pool.submit(_run, case) for name, case in cases.items()}


def _check(case: Case, done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == case.status, done.stderr
    assert case.problem in done.stderr.strip().splitlines()[-1], done.stderr


@pytest.mark.parametrize("name", ARGUMENT_CASES)
def test_bad_argument_is_one_error_line(name: str, runs: dict[str, Future]) -> None:
    _check(ARGUMENT_CASES[name], runs[name].result())


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the scripts would run")
@pytest.mark.parametrize("name", CUDA_CASES)
def test_cuda_without_cuda_is_one_error_line(name: str, runs: dict[str, Future]) -> None:
    _check(CUDA_CASES[name], runs[name].result())
