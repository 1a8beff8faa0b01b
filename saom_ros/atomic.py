"""Atomic file writes: a temp file in the target's folder, then ``os.replace``.

A reader, or a run resumed after a crash, sees the old file or the new one, never a torn one.
The new file gets the mode ``open()`` would give it: the existing file's mode, else 0666 minus
the umask (``mkstemp`` alone makes every file 0600, unreadable to other users and services).
A symbolic link is written through, as ``open()`` writes it: its target is replaced and the link
stays (``current.pt -> models/v1.pt`` keeps pointing at the new v1.pt).
A kill between the temp file's creation and ``os.replace`` leaves ``.<name>.<random>.tmp``
behind; :func:`remove_temp_files` clears those.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

# mkstemp's names: prefix + 8 characters from its alphabet + suffix.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
_UMASK_LOCK = threading.Lock()


def _temp_prefix(name: str) -> str:
    return f".{name}."


def current_umask() -> int:
    """The process umask, read without changing it where /proc tells it (Linux >= 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it: set it straight back
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _through_links(path: Path) -> Path:
    """The file ``open(path, "w")`` would write: ``path`` with every symbolic link followed.

    Replacing the link itself would turn it into a plain file and leave its target stale.
    """
    real = Path(os.path.realpath(path))
    if real.is_symlink():  # realpath stops at a loop; open() would fail on it too
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
    return real


def _mode_for(path: Path) -> int:
    """What ``open(path, "w")`` would leave: the existing file's mode, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write; it replaces ``path`` (a link's target, for a symbolic link) only
    when the block ends without error."""
    path = _through_links(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def remove_temp_files(folder: str | os.PathLike, name_glob: str = "*") -> list[Path]:
    """Delete the temp files that interrupted atomic writes of ``folder/<name_glob>`` left.

    Only names of this module's own pattern (``.<name>.<8 random>.tmp``) are touched. Call it
    when no write to those files can be in progress (at resume, after a save). Returns them.
    """
    removed = []
    for tmp in Path(folder).glob(f"{_temp_prefix(name_glob)}*.tmp"):
        if _TEMP_NAME.fullmatch(tmp.name) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
