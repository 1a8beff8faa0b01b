"""What each field of a checkpoint file must hold, checked before anything is built from it.

Every failure is a ``CheckpointError`` naming the file (``where``) and the field: a malformed or
hostile file stops start-up with a clear message instead of a traceback from deep inside torch.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from saom_ros.model_config import ModelConfig


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the problem."""


def checked_everything(everything: Any, where: str) -> dict[str, Any]:
    """A checkpoint's everything-mode settings: a dict of field names to plain values.

    Field names and types are checked against EverythingSettings by ``settings_for``; this
    module does not import the engine.
    """
    if not isinstance(everything, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (bool, int, float, str))
            for k, v in everything.items()):
        raise CheckpointError(f"{where}: 'everything' must map setting names to numbers, "
                              f"booleans or strings, got {everything!r:.200}")
    return dict(everything)


def checked_state(where: str, what: str, state: Any) -> dict[str, torch.Tensor]:
    """A state dict read from a file (``what``: its name in messages): parameter names to dense
    floating-point tensors (every SAM/SAOM parameter and buffer is one)."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: malformed checkpoint: {what} must map parameter "
                              f"names to tensors, got a {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or \
                value.layout != torch.strided or not value.is_floating_point():
            raise CheckpointError(f"{where}: malformed checkpoint: {what} must map parameter "
                                  f"names to floating-point tensors, got {key!r:.100}: "
                                  f"{value!r:.100}")
    return dict(state)


def checked_config(where: str, field: str, config: Any) -> ModelConfig:
    """The ModelConfig a file's ``field`` (a dict of its fields) describes."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{where}: malformed checkpoint: {field!r} must map ModelConfig "
                              f"fields to values, got a {type(config).__name__}")
    try:
        return ModelConfig(**config)
    except (TypeError, ValueError) as err:  # TypeError: unknown, missing or non-text names
        raise CheckpointError(f"{where}: malformed checkpoint: {field!r}: {err}") from None


def checked_class_names(where: str, field: str, names: Any) -> tuple[str, ...]:
    """A file's class names: a list of strings (a string itself would pass as its letters)."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}: malformed checkpoint: {field!r} must be a list of "
                              f"class names (strings), got {names!r:.100}")
    return tuple(names)


def check_class_count(where: str, config: ModelConfig, class_names: Sequence[str],
                       state: Mapping[str, torch.Tensor]) -> None:
    """The config's class count agrees with the class names and the class head's outputs."""
    head = state.get("class_head.weight")
    n_head = 0 if head is None or not head.dim() else head.shape[0]
    if (config.num_classes > 0 and len(class_names) != config.num_classes) or \
            n_head != config.num_classes:
        raise CheckpointError(
            f"{where}: class-count mismatch: config says {config.num_classes} classes, "
            f"{len(class_names)} class names, class head has {n_head} outputs")
