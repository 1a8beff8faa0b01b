"""Argument types and checks the bench/ scripts share: a bad argument ends the script with one
error line (argparse's, exit status 2) before it builds, loads or trains a model.

torch and saom_ros are imported where they are used: frame_delivery.py runs without them.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from saom_ros.model import Saom


def positive_int(text: str) -> int:
    """argparse type: a count of at least 1 (the scripts print medians over what they count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def frame_sizes(text: str) -> list[tuple[int, int]]:
    """argparse type: ``WxH[,WxH...]`` as (width, height) pairs of positive integers."""
    sizes = []
    for size in text.split(","):
        width, _, height = size.partition("x")
        if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
            raise argparse.ArgumentTypeError(
                f"expected WxH[,WxH...] with positive sides, e.g. 640x480,1280x720; got {size!r}")
        sizes.append((int(width), int(height)))
    return sizes


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated list of some of ``choices``."""
    def parse(text: str) -> list[str]:
        names = text.split(",")
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, unknown))}; choose from {', '.join(choices)}")
        return names
    return parse


def missing_cuda() -> str:
    """Why CUDA cannot run here, or '' when torch sees a CUDA device."""
    import torch
    if torch.cuda.is_available():
        return ""
    return (f"needs a CUDA device; torch {torch.__version__} sees none "
            f"(CUDA build: {torch.version.cuda or 'no'})")


def torch_device(text: str) -> str:
    """argparse type: a torch device this machine has (torch says so only at its first use)."""
    import torch
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text}: the benchmarks run on cpu or cuda")
    if device.type == "cuda" and (reason := missing_cuda()):
        raise argparse.ArgumentTypeError(reason)
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has "
                                         f"{torch.cuda.device_count()} CUDA device(s)")
    return text


def load_checkpoint(parser: argparse.ArgumentParser, path: str) -> Saom:
    """The model of ``path`` on the CPU; a file that is no checkpoint ends in ``parser.error``
    with load_model's message, which names the file and the problem."""
    from saom_ros.checkpoint_fields import CheckpointError
    from saom_ros.model import load_model
    try:
        return load_model(path, device="cpu")
    except CheckpointError as err:
        parser.error(f"--checkpoint: {err}")
