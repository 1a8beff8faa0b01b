"""A private ROS domain per test process, so concurrent test runs never see each other.

A process takes an id that no other live process holds: it tries the ids in turn from one
derived from its process id, and takes one by an exclusive flock on a lock file (under
tempfile.gettempdir()) for each domain the id brings into use, held open until the process
exits, when the kernel releases the locks (a crash included).
"""
from __future__ import annotations

import fcntl
import os
import tempfile

IDS = range(1, 101)
# Domains the tests derive from the id: the id, 100 + id (test_segment_node, test_demo) and
# 120 + id (test_input_qos); at most 220, within Fast DDS's 0..232. Id 21's 121 is id 1's 120 + 1,
# so every domain of an id is locked, not just the id.
OFFSETS = (0, 100, 120)
_held: dict[int, tuple[int, list[int]]] = {}  # process id -> (domain id, its lock files' fds)


def unique_domain_id() -> int:
    """This process's domain id in 1..100 (the same on every call); RuntimeError when every id
    is held by other live processes."""
    pid = os.getpid()  # a forked child takes its own
    if pid not in _held:
        _held[pid] = _take(pid)
    return _held[pid][0]


def _take(pid: int) -> tuple[int, list[int]]:
    folder = tempfile.gettempdir()
    for k in range(len(IDS)):
        domain_id = IDS[(pid + k) % len(IDS)]
        fds: list[int] = []
        try:
            for domain in (domain_id + offset for offset in OFFSETS):
                fds.append(_open_lock(os.path.join(folder, f"saom_ros_test_domain_{domain}.lock")))
                fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another process, or a lock file this one cannot open
            for fd in fds:
                os.close(fd)
            continue
        return domain_id, fds
    raise RuntimeError(f"every ROS test domain id ({IDS.start}..{IDS.stop - 1}) is held by "
                       f"another live process (lock files saom_ros_test_domain_*.lock in {folder})")


def _open_lock(path: str) -> int:
    """A descriptor of the lock file ``path``, made readable by every user when this process
    makes it: test runs of other users share the machine's DDS domains, so they lock the same
    files. An existing file is opened without O_CREAT, which protected_regular refuses for
    another user's file in a sticky folder such as /tmp."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
        os.fchmod(fd, 0o666)  # whatever the umask took away
        return fd
