"""`saom-train export`: the SAOM checkpoint the node loads, with the everything-mode settings."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from saom_ros.everything_settings import carried_settings, settings_for
from saom_ros.model import load_model, save_checkpoint
from saom_ros.training.train_state import load_train_state, model_from_state


def export(source: str | os.PathLike, out: str | os.PathLike,
           everything: Optional[dict[str, Any]] = None) -> Path:
    """Write the SAOM checkpoint the node loads, from a run directory, a training checkpoint, or
    a SAOM / official SAM checkpoint (to set the everything-mode settings it carries).

    The settings it carries: a training run's ``evaluate`` section (its grid, when null, the
    training assignment's) or a checkpoint's own, then ``everything`` (EverythingSettings fields).
    """
    source = Path(source)
    if source.is_dir():
        source = source / "checkpoints" / "last.pt"
    try:
        state: Optional[dict] = load_train_state(source)
    except ValueError:
        state = None
    if state is None:
        model, run = load_model(source), {}
        metadata = model.metadata
    else:
        model, cfg = model_from_state(state, source), state["config"]
        run = {"points_per_side": (cfg["evaluate"]["points_per_side"]
                                   or cfg["assignment"]["points_per_side"]),
               **cfg["evaluate"]["everything"]}
        metadata = {"source": str(source), "step": int(state["step"]), "train_config": cfg}
    settings = settings_for(model, **{**run, **(everything or {})})
    save_checkpoint(out, model, metadata, everything=carried_settings(settings))
    return Path(out)
