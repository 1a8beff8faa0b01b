"""Atomic writes: the target is replaced whole or not at all, with the mode open() gives."""
import os
import stat

import pytest

from saom_ros.atomic import atomic_open, atomic_write_text, current_umask, remove_temp_files


def test_write_replaces_the_file_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_honour_the_umask_like_open(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    atomic_write_text(tmp_path / "model.pt", "x")
    with open(tmp_path / "plain.txt", "w"):
        pass
    assert stat.S_IMODE((tmp_path / "model.pt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode


def test_replacing_a_file_keeps_its_mode_like_open(tmp_path, umask):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "new"


def test_remove_temp_files_takes_only_the_modules_own_leftovers(tmp_path):
    with pytest.raises(RuntimeError):  # a write that died leaves nothing...
        with atomic_open(tmp_path / "step_00000001.pt"):
            raise RuntimeError
    # ...but a SIGKILL between mkstemp and os.replace does: names as mkstemp makes them.
    stale = [tmp_path / ".step_00000010.pt.k3x_9a0q.tmp", tmp_path / ".last.pt.abcdefgh.tmp"]
    others = [tmp_path / "step_00000010.pt", tmp_path / ".step_1.pt.tmp",
              tmp_path / "user.tmp", tmp_path / ".step_00000010.pt.ABCDEFGH.tmp"]
    for p in stale + others:
        p.write_bytes(b"half")
    assert remove_temp_files(tmp_path, "step_*.pt") == [stale[0]]
    assert remove_temp_files(tmp_path) == [stale[1]]
    assert sorted(tmp_path.iterdir()) == sorted(others)


def test_a_symbolic_link_is_written_through_like_open(tmp_path):
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "v1.pt"
    atomic_write_text(target, "old")
    target.chmod(0o640)
    link = tmp_path / "current.pt"
    link.symlink_to("models/v1.pt")  # relative, as `ln -s` makes it
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == "models/v1.pt"
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["current.pt", "models", "v1.pt"]


def test_a_dangling_link_gets_its_target_and_a_loop_is_refused(tmp_path):
    link = tmp_path / "current.pt"
    link.symlink_to(tmp_path / "v2.pt")
    atomic_write_text(link, "x")
    assert link.is_symlink() and (tmp_path / "v2.pt").read_text() == "x"
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError, match="symbolic links"):
        atomic_write_text(tmp_path / "a", "x")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()
