"""Run a compiled (numba) kernel on PyTorch's own OpenMP threads.

PyTorch's CPU ops run on an OpenMP team whose idle threads keep spinning for milliseconds after
each op (GNU OpenMP's GOMP_SPINCOUNT) before they sleep. Threads of our own started right after
an op share the cores with them: on 2 cores the full-size stability pass of a 640x480 frame took
62 ms after a decoder op and 34 ms when the team slept at once. Started through the same
runtime (``GOMP_parallel``, which GNU, LLVM and Intel OpenMP all export), a kernel runs on those
threads instead.

The kernel is a numba ``cfunc`` taking one pointer: an int64 header that the caller packs with
``pack`` and the kernel reads back with ``array_at``; ``my_part`` tells each thread which part
of the work is its own.
"""
from __future__ import annotations

import ctypes
import functools
import os
from typing import Callable, NamedTuple, Optional, Sequence

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# Library names of the OpenMP runtimes PyTorch links (GNU, LLVM, Intel).
RUNTIMES = ("libgomp", "libomp", "libiomp5")


class Team(NamedTuple):
    """The OpenMP runtime PyTorch's ops run on."""

    parallel: Callable[[int, int, int, int], None]  # GOMP_parallel(fn, data, num_threads, flags)
    thread_num: int  # address of omp_get_thread_num
    num_threads: int  # address of omp_get_num_threads


def _loaded_libraries() -> list[str]:
    """Paths of the shared libraries loaded into this process (none where there is no /proc)."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "/" in line})
    except OSError:
        return []


def pick_runtime(paths: Sequence[str], torch_dir: str) -> Optional[str]:
    """The OpenMP runtime among library ``paths``: the one under ``torch_dir`` (a pip wheel of
    PyTorch bundles its own) before any other (numba's OpenMP layer would load the system's)."""
    found = sorted((not path.startswith(torch_dir), path) for path in paths
                   if path.rsplit("/", 1)[-1].startswith(tuple(n + "." for n in RUNTIMES)))
    return found[0][1] if found else None


@functools.lru_cache(maxsize=1)
def team() -> Optional[Team]:
    """PyTorch's OpenMP runtime (imported torch loads it), or None where there is none to find
    (callers then run their kernel in the calling thread)."""
    import torch  # loads the runtime
    path = pick_runtime(_loaded_libraries(), os.path.dirname(torch.__file__))
    if path is None:
        return None
    lib = ctypes.CDLL(path)  # the loaded library: dlopen returns its handle
    try:
        parallel = lib.GOMP_parallel
        thread_num, num_threads = lib.omp_get_thread_num, lib.omp_get_num_threads
    except AttributeError:
        return None
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    # The two query functions as addresses, which the kernel calls (``call_int``).
    return Team(parallel, ctypes.cast(thread_num, ctypes.c_void_p).value,
                ctypes.cast(num_threads, ctypes.c_void_p).value)


def run(kernel: numba.core.ccallback.CFunc, header: np.ndarray, threads: int) -> None:
    """Run ``kernel(header)`` on ``threads`` threads of the team (the caller is one of them);
    returns when all are done. The arrays the header points to must outlive the call."""
    t = team()
    if t is None:
        raise RuntimeError("no OpenMP runtime in this process: check team() first")
    t.parallel(kernel.address, header.ctypes.data, threads, 0)


def pack(arrays: Sequence[np.ndarray], values: Sequence[int] = ()) -> np.ndarray:
    """An int64 header: (address, size) of each C-contiguous array, then ``values``."""
    header = []
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError(f"pack needs C-contiguous arrays, got strides {a.strides}")
        header += [a.ctypes.data, a.size]
    return np.array(header + list(values), np.int64)


@intrinsic
def _voidptr(typingctx, address):  # pragma: no cover
    """An int64 address as a void pointer."""
    if address != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
    return types.voidptr(types.int64), codegen


@intrinsic
def call_int(typingctx, address):  # pragma: no cover
    """Call the C function ``int f(void)`` at an int64 address."""
    if address != types.int64:
        return None

    def codegen(context, builder, signature, args):
        fn = ir.FunctionType(ir.IntType(32), [])
        return builder.call(builder.inttoptr(args[0], fn.as_pointer()), [])
    return types.int32(types.int64), codegen


@numba.njit(inline="always")
def array_at(header, i, dtype):  # pragma: no cover
    """The 1-D array whose (address, size) ``pack`` put at ``header[i]``."""
    return numba.carray(_voidptr(header[i]), (header[i + 1],), dtype)


@numba.njit(inline="always")
def my_part(n, team_thread_num, team_num_threads):  # pragma: no cover
    """[first, last) of ``n`` items for the calling thread of the team."""
    thread, threads = call_int(team_thread_num), call_int(team_num_threads)
    return n * thread // threads, n * (thread + 1) // threads
