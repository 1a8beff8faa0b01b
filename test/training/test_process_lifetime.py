"""Programs started through dies_with_this_process end with the process that started them, even
one killed with SIGKILL, which runs no cleanup."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from processes import alive, wait_for
from saom_ros.training.process_lifetime import dies_with_this_process

# An owner that starts `sleep` tied to itself, says its pid, then stays or leaves at once.
OWNER = """
import os, subprocess, sys, time
from saom_ros.training.process_lifetime import dies_with_this_process
child = subprocess.Popen(dies_with_this_process(["sleep", "300"]))
print(child.pid, flush=True)
time.sleep(300) if sys.argv[1] == "stay" else os._exit(0)
"""


def _start_owner(tmp_path: Path, end: str) -> tuple[subprocess.Popen, int]:
    """The owner process and its child's pid."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, end], stdout=subprocess.PIPE,
                             text=True, cwd=tmp_path)
    return owner, int(owner.stdout.readline())


def _ended(pid: int) -> bool:
    """Whether ``pid`` ended within 5 s; it is killed either way (no test leaves it running)."""
    gone = wait_for(lambda: not alive(pid), 5)
    if not gone:
        os.kill(pid, signal.SIGKILL)
    return gone


def test_a_program_dies_with_the_sigkilled_process_that_started_it(tmp_path):
    owner, child = _start_owner(tmp_path, "stay")
    try:
        # The launcher became the program: same pid, which ai2thor's stop kills and waits for.
        assert wait_for(lambda: alive(child) and Path(f"/proc/{child}/cmdline").read_bytes()
                        .startswith(b"sleep\0"), 10)
    finally:
        owner.kill()
        owner.wait()
    assert _ended(child), f"the program outlived its SIGKILLed owner: pid {child}"


def test_a_program_whose_owner_is_gone_before_it_starts_ends_too(tmp_path):
    owner, child = _start_owner(tmp_path, "leave")  # gone before or after the prctl: both end
    owner.wait()
    assert _ended(child), f"the program outlived its owner: pid {child}"


def test_a_missing_program_fails_as_from_a_shell(tmp_path):
    done = subprocess.run(dies_with_this_process([str(tmp_path / "thor-Linux64")]),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 127 and "No such file or directory" in done.stderr
