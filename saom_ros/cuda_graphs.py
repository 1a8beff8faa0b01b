"""CUDA graph capture shared by the graphed encoder and the graphed decoder token stage."""
from __future__ import annotations

import warnings
from typing import Callable, Optional, TypeVar

import torch

T = TypeVar("T")

_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """One warm-up stream per device for the whole process: cuBLAS keeps a workspace for every
    stream it has run on, so a new stream per engine held 33 MiB more after each cleanup."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


def capture(run: Callable[[], T], device: torch.device, what: str,
            pool: Optional[tuple] = None) -> Optional[tuple[torch.cuda.CUDAGraph, T]]:
    """``run`` once off the current stream (lazy initialisation, kernel autotuning and
    compilation happen there, as torch's docs ask), then captured: the graph and the output
    tensors its replays overwrite. None, with a warning naming ``what``, if capture fails."""
    try:
        side = side_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = run()
    except RuntimeError as err:
        warnings.warn(f"{what} runs without a CUDA graph: capture failed: {err}")
        return None
    return graph, out
