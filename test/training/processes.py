"""Process-tree helpers for tests that kill a parent and look for what it left running (/proc)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


def _stat(pid: int) -> Optional[tuple[str, int]]:
    """(state, parent pid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name before ')' may hold spaces
    return fields[0], int(fields[1])


def children(pid: int, cmdline_has: str = "") -> list[int]:
    """Live child processes of ``pid`` whose command line contains ``cmdline_has``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[1] == pid:
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if stat[0] != "Z" and cmdline_has in cmdline:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def wait_for(check: Callable[[], T], timeout: float, interval: float = 0.1) -> T:
    """The first truthy value of ``check()`` within ``timeout`` seconds, else the last value."""
    end = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < end:
        time.sleep(interval)
    return value
