"""A training run's folder: its metrics.csv rows, whether it holds a run, replacing one, and
the newest readable checkpoint to resume from."""
from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from saom_ros.model import CheckpointError
from saom_ros.training.train_state import load_train_state

CSV_FIELDS = ("step", "epoch", "lr", "loss", "dice", "focal", "ce", "iou", "prompts",
              "images_per_s")
# What a run leaves in its run dir (the embedding cache is keyed by encoder, so it stays valid).
_RUN_OUTPUTS = ("checkpoints", "metrics.csv", "config.yaml", "tensorboard")


def warn(message: str) -> None:
    """A warning on stderr, in the CLI's voice."""
    print(f"saom-train train: warning: {message}", file=sys.stderr)


def _metric_row(row: dict) -> Optional[dict]:
    """A metrics.csv row with every field a number, else None (a torn or foreign line)."""
    if list(row) != list(CSV_FIELDS):
        return None
    try:
        int(row["step"]), int(row["epoch"])
        for key in CSV_FIELDS[2:]:
            float(row[key])
    except (TypeError, ValueError):
        return None
    return row


def metric_rows(path: Path, step: int) -> list[dict]:
    """The well-formed rows of ``path`` up to ``step`` (a resumed run rewrites those after it);
    dropped malformed ones are reported."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f, restkey="_extra")
        rows = [(r, _metric_row(r)) for r in reader]
    bad = [raw for raw, row in rows if row is None]
    if bad:
        warn(f"{path}: dropped {len(bad)} malformed row(s), e.g. "
             f"{','.join(str(v) for v in bad[0].values())!r}")
    return [row for _, row in rows if row is not None and int(row["step"]) <= step]


def has_run(run_dir: Path) -> bool:
    """Whether a run wrote into ``run_dir`` (checkpoints or metrics)."""
    return ((run_dir / "metrics.csv").exists() or (run_dir / "checkpoints" / "last.pt").exists()
            or any((run_dir / "checkpoints").glob("step_*.pt")))


def clear_run(run_dir: Path) -> None:
    """Remove a previous run's outputs: each moves into one hidden folder (one atomic rename
    apiece, so no old checkpoint stays visible once its folder moved), then that goes."""
    trash = run_dir / ".overwritten"
    shutil.rmtree(trash, ignore_errors=True)  # of an overwrite killed half-way
    trash.mkdir()
    for name in _RUN_OUTPUTS:
        if (run_dir / name).exists():
            os.replace(run_dir / name, trash / name)
    shutil.rmtree(trash)


def readable_checkpoint(checkpoint_dir: Path, report: bool) -> Optional[tuple[Path, dict]]:
    """The newest readable of last.pt and the step files, with its state; None: there is none.

    An unreadable last.pt falls back to the newest readable step file, with a warning naming
    both (when ``report``); when none is readable, last.pt's error is raised.
    """
    last = checkpoint_dir / "last.pt"
    candidates = [last] if last.exists() else []
    candidates += sorted(checkpoint_dir.glob("step_*.pt"), reverse=True)
    first_error = None
    for path in candidates:
        try:
            state = load_train_state(path)
        except CheckpointError as err:
            first_error = first_error or err
            continue
        if first_error is not None and report:
            warn(f"{first_error}; resuming from {path} instead")
        return path, state
    if first_error is not None:
        raise first_error
    return None
