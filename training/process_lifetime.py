"""Worker processes that die with their parent, and stop signals a training run finishes on.

A parent killed with SIGKILL runs no cleanup, and its workers (DataLoader workers of about 0.4 GB
each, collector workers with their simulators) would live on under init for as long as anyone
leaves them. Linux's ``PR_SET_PDEATHSIG`` has the kernel signal the worker when its parent dies.
A program started by code we do not own (ai2thor's simulator) gets it through
:func:`dies_with_this_process`: this file, run as a script, sets it and then execs the program.

SIGINT and SIGTERM ask a training run to stop: it finishes its step and checkpoints. Ctrl-C
sends SIGINT to the whole process group, DataLoader workers included. A forked worker inherits
the parent's handler, but one started by spawn or forkserver would die of it (and the DataLoader
raise in the parent mid-step): workers ignore both and leave with their parent.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, NoReturn, Sequence

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent, ``parent_pid``, exits.

    Call it first thing in the worker. The kernel ties the signal to the parent *thread* that
    started the worker: start workers from a thread that lives as long as the parent process.
    Not Linux: nothing happens (no such call).
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
        os.kill(os.getpid(), sig)


def dies_with_this_process(command: Sequence[str], sig: int = signal.SIGKILL) -> list[str]:
    """``command`` run so that the kernel sends it ``sig`` when this process exits.

    The command runs through this file as a script (:func:`_exec_tied`), which keeps its
    process id. The signal is tied to the thread that starts it (see :func:`die_with_parent`).
    ``-I -S``: stdlib only, no site hooks, whatever the caller's sys.path.
    """
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()),
            str(int(sig)), *command]


def _exec_tied(parent_pid: int, sig: int, command: Sequence[str]) -> NoReturn:
    """die_with_parent, then become ``command`` (the parent-death signal survives exec)."""
    die_with_parent(parent_pid, sig)
    try:
        os.execvp(command[0], list(command))
    except OSError as err:  # as a shell reports it: the caller sees an exited process
        print(f"{command[0]}: {err.strerror}", file=sys.stderr)
        os._exit(127)


def dataloader_worker_init(parent_pid: int, worker_id: int) -> None:
    """A DataLoader ``worker_init_fn`` (bind ``parent_pid`` with functools.partial).

    The worker ignores the stop signals (the parent decides when to stop) and then unblocks them:
    start it inside :func:`stop_signals_blocked`, so none can arrive before it ignores them.
    """
    die_with_parent(parent_pid)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back (not lost) while processes that inherit the mask start."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StopRequest:
    """The first SIGINT/SIGTERM received while :func:`catch_stop_signals` is active (0: none)."""

    def __init__(self) -> None:
        self.signum = 0

    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum  # later ones change nothing: the stop is under way


@contextmanager
def catch_stop_signals() -> Iterator[StopRequest]:
    """Record SIGINT/SIGTERM instead of dying of them; the previous handlers come back after.

    Outside the main thread Python cannot set handlers: the request then never fires.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request._handle) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    _exec_tied(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
