"""segment_node's model and engine, built from its parameters without ROS: the device, the
checkpoint, class names and the everything-mode settings (explicit values over the checkpoint's).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from saom_ros.classes import load_class_file
from saom_ros.everything import EverythingEngine
from saom_ros.everything_settings import settings_for
from saom_ros.model import CheckpointError, load_model
from saom_ros.model_config import DEFAULT_CHECKPOINT


class StartupError(RuntimeError):
    """The node cannot start; the message says why (a missing file, an unavailable device...)."""


def resolve_device(spec: str) -> torch.device:
    """The torch device for a ``device`` parameter (auto, cpu, cuda, cuda:N); StartupError for
    any other, or if CUDA is asked for but absent."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):  # torch's own message lists every device type it knows
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise StartupError(f"device {spec!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StartupError(f"device {spec!r} requested but CUDA is not available on this "
                               "machine (torch.cuda.is_available() is False); use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise StartupError(f"device {spec!r} requested but only {count} CUDA device(s) exist")
    return device


@dataclasses.dataclass(frozen=True)
class LoadedEngine:
    engine: EverythingEngine
    device: torch.device
    class_names: tuple[str, ...]


def load_engine(checkpoint: str, model_type: str = "auto", device: str = "auto",
                classes: str = "", explicit: Optional[Mapping[str, Any]] = None) -> LoadedEngine:
    """The engine for these node parameters (``checkpoint`` "" = the packaged model; ``classes``
    a class file or ""; ``explicit``: EverythingSettings fields given by the user, which win over
    the checkpoint's). StartupError says what is wrong."""
    torch_device = resolve_device(device)
    path = Path(checkpoint or DEFAULT_CHECKPOINT)
    if path == DEFAULT_CHECKPOINT and not path.is_file():
        raise StartupError(f"checkpoint file {path} does not exist (the packaged "
                           "default model is not installed; set the checkpoint parameter)")
    try:
        model = load_model(path, None if model_type == "auto" else model_type, torch_device)
    except CheckpointError as err:
        raise StartupError(str(err)) from None
    class_names = model.class_names
    if classes:
        try:
            class_names = load_class_file(classes)
        except ValueError as err:
            raise StartupError(str(err)) from None
        if len(class_names) != len(model.class_names):
            raise StartupError(f"class file {classes} names {len(class_names)} "
                               f"classes but {path} has {len(model.class_names)}")
    try:
        settings = settings_for(model, **(explicit or {}))
    except ValueError as err:  # a checkpoint carrying settings of the wrong name or type
        raise StartupError(f"{path}: {err}") from None
    engine = EverythingEngine(model, settings, torch_device)
    if torch_device.type == "cuda":  # kernel autotuning at start-up, not on the first frame
        engine.warm_up()
    return LoadedEngine(engine, torch_device, class_names)
