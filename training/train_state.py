"""Training checkpoints (saom-train-state): atomic writes, RNG state, resume check, reading."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from saom_ros.atomic import atomic_open
from saom_ros.model import CheckpointError, Saom, load_failure, saom_from_fields

STATE_FORMAT = "saom-train-state"
_STATE_KEYS = ("config", "model_config", "class_names", "model", "optimizer", "scheduler", "scaler",
               "step", "rng")
# Keys that may differ between a run and its resumption (they do not change the result).
_RESUME_FREE_KEYS = {("train", "run_dir"), ("data", "num_workers"), ("train", "log_every"),
                     ("train", "checkpoint_every"), ("train", "keep_checkpoints")}


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` atomically (never a torn checkpoint)."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def rng_state() -> dict:
    """The torch, CUDA, numpy and Python random states (weights_only-loadable)."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      *map(float, np_state[2:])],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def config_diff(a: dict, b: dict, where: tuple = ()) -> list[str]:
    """``key: old -> new`` for each key that differs and would change a resumed run."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = where + (key,)
        if path in _RESUME_FREE_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, path)
        elif _as_number(va) != _as_number(vb):
            out.append(f"{'.'.join(path)}: {va!r} -> {vb!r}")
    return out


_LAYOUT_NAMES = {"world_size": "processes", "images": "trainable images",
                 "steps_per_epoch": "steps per epoch", "total_steps": "total steps"}


def layout_diff(saved: Optional[dict], now: dict) -> list[str]:
    """Why a run laid out as ``saved`` (a checkpoint's ``layout``) cannot resume as ``now``.

    The number of processes sets the global batch, the steps per epoch, the schedule's length and
    which images a step position means; the trainable images (the dataset's content) set the
    last three. A checkpoint from before layouts were recorded (None) is not checked.
    """
    saved = saved or {}
    out = [f"it was written with {saved[key]} {name}, this run has {now[key]}"
           for key, name in _LAYOUT_NAMES.items() if key in saved and saved[key] != now[key]]
    if saved.get("world_size", now["world_size"]) != now["world_size"]:
        out.append(f"resume it with {saved['world_size']} process(es) (torchrun "
                   "--nproc_per_node=N; 1: without torchrun)")
    return out


def _as_number(value: Any) -> Any:
    """Numeric text as a float: runs started before load_config turned ``1e-3`` into a number
    hold it as text, and resuming them must not count that as a change."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def load_train_state(path: str | os.PathLike) -> dict:
    """A training checkpoint written by Trainer.save (weights_only).

    CheckpointError (a ValueError) naming the file for a missing, damaged or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for torn or foreign files
        raise CheckpointError(f"{path} is not a readable training checkpoint (torch.load failed: "
                              f"{type(err).__name__}: {load_failure(err)})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a saom-train training checkpoint")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is a damaged training checkpoint (no {', '.join(missing)})")
    return state


def model_from_state(state: dict, path: Optional[str | os.PathLike] = None) -> Saom:
    """The Saom held by a training checkpoint (read from ``path``, which errors name).

    CheckpointError for a malformed model_config, class_names or model state dict, refused
    before any weight is built.
    """
    where = "training checkpoint" + (f" {path}" if path is not None else "")
    return saom_from_fields(where, state, ("model_config", "class_names", "model")).eval()
