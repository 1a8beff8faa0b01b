"""Worker processes that die with their parent.

A parent killed with SIGKILL runs no cleanup, and its workers (DataLoader workers of about 0.4 GB
each, collector workers with their simulators) would live on under init for as long as anyone
leaves them. Linux's ``PR_SET_PDEATHSIG`` has the kernel signal the worker when its parent dies.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

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


def dataloader_worker_init(parent_pid: int, worker_id: int) -> None:
    """A DataLoader ``worker_init_fn`` (bind ``parent_pid`` with functools.partial)."""
    die_with_parent(parent_pid)
