"""init_distributed under torchrun: a rank dies with the agent that started it, even one killed
with SIGKILL, or already gone; a process not started by torchrun outlives its parent.

A stand-in agent (a process that starts the rank, as torchrun's does) keeps the test short: a
real torchrun with gloo ranks takes far longer to start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from processes import alive, wait_for

# The agent starts the rank (argv[1]: its code, argv[2]: its mode) and says the rank's pid;
# then it stays (to be killed) or leaves at once. The rank writes to the same pipe.
AGENT = """
import os, subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], str(os.getpid())])
print(rank.pid, flush=True)
time.sleep(300) if sys.argv[2] == "stay" else os._exit(0)
"""
RANK = """
import os, sys, time
from saom_ros.training.distributed import init_distributed
while sys.argv[1] == "leave" and os.getppid() == int(sys.argv[2]):
    time.sleep(0.01)  # join as a rank whose agent is gone: wait until it has been adopted
print("adopted by", os.getppid(), flush=True)
init_distributed("cpu")
print("joined", flush=True)
time.sleep(300)
"""


def _run_agent(mode: str, torchrun: bool) -> tuple[subprocess.Popen, int]:
    """The agent and its rank's pid; the rank's lines follow on the agent's stdout."""
    env = {**os.environ, "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    env.pop("TORCHELASTIC_RUN_ID", None)
    if torchrun:
        env["TORCHELASTIC_RUN_ID"] = "test"  # what torchrun sets for its ranks
    agent = subprocess.Popen([sys.executable, "-c", AGENT, RANK, mode], env=env,
                             stdout=subprocess.PIPE, text=True)
    return agent, int(agent.stdout.readline())


def _stop(pid: int) -> None:
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("torchrun", [True, False])
def test_a_rank_dies_with_a_sigkilled_agent_and_only_under_torchrun(torchrun):
    agent, rank = _run_agent("stay", torchrun)
    try:
        assert agent.stdout.readline().startswith(f"adopted by {agent.pid}")  # not yet
        assert agent.stdout.readline() == "joined\n"
        agent.kill()
        agent.wait()
        assert wait_for(lambda: not alive(rank), 5) is torchrun, \
            "a torchrun rank outlived its agent" if torchrun else "a plain run died with its parent"
    finally:
        _stop(rank)
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_a_rank_whose_agent_is_already_gone_dies_when_it_joins():
    agent, rank = _run_agent("leave", torchrun=True)
    try:
        agent.wait()
        adopted = agent.stdout.readline()
        if adopted != "adopted by 1\n":
            pytest.skip(f"orphans go to a subreaper here ({adopted.strip()}), not to init")
        died = wait_for(lambda: not alive(rank), 10)
        _stop(rank)  # which closes the pipe
        assert died and "joined" not in agent.stdout.read(), "the orphaned rank joined"
    finally:
        _stop(rank)
