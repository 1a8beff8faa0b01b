"""ros_domain: concurrent processes never share a ROS domain, whatever their process ids."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Another process holding domain ids: a child that prints its id and keeps it until its stdin
# closes.
HOLDER = ("import sys; sys.path.insert(0, {!r}); from ros_domain import unique_domain_id; "
          "print(unique_domain_id(), unique_domain_id(), flush=True); sys.stdin.read()")


def _holder(tmp_path: Path) -> subprocess.Popen:
    code = HOLDER.format(str(Path(__file__).parent))
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})


@pytest.mark.parametrize("free, taken", [
    ((50, 55), 2),  # two ids free: the two processes take one each
    ((30, 50), 1),  # 30's domain 120 + 30 is 50's 100 + 50: only one can take either
])
def test_concurrent_processes_get_ids_no_other_one_holds(tmp_path: Path, free: tuple,
                                                          taken: int) -> None:
    """Every other id's domain is held here (as other test runs would hold them): whatever ids
    the process ids suggest, the first processes take the free ones, and the next one, finding
    none, refuses instead of sharing one."""
    held = []
    for domain in set(range(1, 101)) - set(free):
        held.append(os.open(tmp_path / f"saom_ros_test_domain_{domain}.lock",
                            os.O_RDONLY | os.O_CREAT))
        fcntl.flock(held[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
    children = []
    try:
        ids = []
        for _ in range(taken):  # each keeps its id while the next one starts
            children.append(_holder(tmp_path))
            first, again = map(int, children[-1].stdout.readline().split())
            assert first == again
            ids.append(first)
        assert len(set(ids)) == taken and set(ids) <= set(free)
        refused = _holder(tmp_path)
        _, err = refused.communicate("", timeout=60)
        assert refused.returncode != 0 and "every ROS test domain id (1..100) is held" in err
        for child in children:  # an id is free again when its process has ended
            child.communicate("", timeout=60)
        last = _holder(tmp_path)
        out, _ = last.communicate("", timeout=60)
        assert int(out.split()[0]) in free
    finally:
        for child in children:
            child.kill()
            child.communicate()
        for fd in held:
            os.close(fd)


def test_a_lock_file_that_cannot_be_opened_is_skipped_like_a_held_one(tmp_path: Path) -> None:
    """Lock files of every id but one lead nowhere (a link into a missing folder: opening it
    fails, as another user's file can): the process takes the one id it can lock."""
    for domain in set(range(1, 101)) - {42}:
        (tmp_path / f"saom_ros_test_domain_{domain}.lock").symlink_to(tmp_path / "gone" / "x")
    child = _holder(tmp_path)
    out, err = child.communicate("", timeout=60)
    assert child.returncode == 0 and "Traceback" not in err, err
    assert out.split() == ["42", "42"]
    assert (tmp_path / "saom_ros_test_domain_42.lock").stat().st_mode & 0o777 == 0o666
