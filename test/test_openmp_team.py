"""Tests for saom_ros.openmp_team: a compiled kernel runs on PyTorch's OpenMP threads."""
from __future__ import annotations

import threading

import numba
import numpy as np
import pytest
import torch
from numba import types

from saom_ros import openmp_team


@numba.cfunc(types.void(types.voidptr))
def _record(data):  # pragma: no cover
    """Each thread writes its number, the team's size and the sum of its part of the values
    into its row of the output."""
    head = numba.carray(data, (6,), np.int64)
    values = openmp_team.array_at(head, 0, np.float32)
    out = openmp_team.array_at(head, 2, np.int64)
    first, last = openmp_team.my_part(values.shape[0], head[4], head[5])
    thread = openmp_team.call_int(head[4])
    total = 0.0
    for i in range(first, last):
        total += values[i]
    out[3 * thread] = thread
    out[3 * thread + 1] = openmp_team.call_int(head[5])
    out[3 * thread + 2] = int(total)


def _run(values: np.ndarray, threads: int) -> np.ndarray:
    team = openmp_team.team()
    out = np.full(3 * threads, -1, np.int64)
    header = openmp_team.pack([values, out], [team.thread_num, team.num_threads])
    openmp_team.run(_record, header, threads)
    return out.reshape(threads, 3)


def test_pytorchs_runtime_is_found() -> None:
    team = openmp_team.team()
    assert team is not None  # PyTorch's Linux builds link an OpenMP runtime
    assert team.thread_num and team.num_threads


def test_the_runtime_pytorch_bundles_comes_first() -> None:
    torch_dir = "/venv/site-packages/torch"
    loaded = ["/lib/x86_64-linux-gnu/libgomp.so.1.0.0", "/lib/x86_64-linux-gnu/libc.so.6",
              f"{torch_dir}/lib/libgomp.so.1", f"{torch_dir}/lib/libtorch_cpu.so"]
    assert openmp_team.pick_runtime(loaded, torch_dir) == f"{torch_dir}/lib/libgomp.so.1"
    assert openmp_team.pick_runtime(loaded[:2], torch_dir) == loaded[0]  # a system runtime
    assert openmp_team.pick_runtime(["/opt/lib/libiomp5.so"], torch_dir) == "/opt/lib/libiomp5.so"
    assert openmp_team.pick_runtime(loaded[1:2], torch_dir) is None
    assert openmp_team.pick_runtime(["/opt/lib/libgompx.so"], torch_dir) is None


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_thread_of_the_team_runs_its_part(threads: int) -> None:
    torch.ones(64, 64) @ torch.ones(64, 64)  # the team exists and may still spin
    values = np.arange(100, dtype=np.float32)
    out = _run(values, threads)
    assert out[:, 0].tolist() == list(range(threads))
    assert (out[:, 1] == threads).all()
    assert out[:, 2].sum() == values.sum()  # the parts cover the values once


def test_a_thread_of_our_own_gets_a_team_of_its_own() -> None:
    # The node segments on its own inference thread: OpenMP gives that thread its own team.
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=_run(np.ones(10, np.float32),
                                                                      2)))
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    assert result["out"][:, 0].tolist() == [0, 1] and result["out"][:, 2].sum() == 10


def test_pack_refuses_a_non_contiguous_array() -> None:
    with pytest.raises(ValueError, match="C-contiguous"):
        openmp_team.pack([np.zeros((4, 4), np.float32)[:, 0]])
