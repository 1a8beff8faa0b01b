"""The training device and the torchrun process group (DDP over nccl or gloo)."""
from __future__ import annotations

import dataclasses
import os
import signal

import torch
import torch.distributed as dist

from saom_ros.training.process_lifetime import die_with_parent


def resolve_device(name: str, local_rank: int) -> torch.device:
    """train.device (auto, cpu, cuda, ...) as a device; cuda is this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


@dataclasses.dataclass
class DistInfo:
    """This process's place in the process group (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _runs_this_interpreter(pid: int) -> bool:
    """Whether process ``pid`` runs the same executable as this one (False: unknown)."""
    try:
        return os.path.samefile(f"/proc/{pid}/exe", "/proc/self/exe")
    except OSError:  # gone, or another user's (init, to an unprivileged user)
        return False


def die_with_torchrun_agent() -> None:
    """Under torchrun, have this rank killed when the agent that started it exits.

    A SIGKILLed agent (the OOM killer) stops nothing: its ranks would train on under init,
    writing into the run folder. The agent is the parent (it starts ranks from its main thread).
    One already gone was replaced by init (PID 1): die now. An agent that is itself PID 1 (the
    command of a container) runs this interpreter, and its exit ends the container anyway.
    A subreaper that adopted this rank is not told apart: the rank then lives on, as before.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it for its ranks only
        return
    agent = os.getppid()
    if agent == 1 and not _runs_this_interpreter(1):
        os.kill(os.getpid(), signal.SIGKILL)
    die_with_parent(agent)  # an agent gone between getppid and prctl is caught there


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU).

    Under torchrun the rank dies with the agent, even one killed with SIGKILL.
    """
    die_with_torchrun_agent()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
