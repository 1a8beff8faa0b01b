"""A training run's logs: metrics.csv rows, TensorBoard scalars and the resolved config.yaml."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from saom_ros.atomic import atomic_write_text
from saom_ros.training.run_dir import CSV_FIELDS, metric_rows

# A step's statistics in a metrics.csv row: means per image, but prompts, the step's total.
STAT_KEYS = ("loss", "dice", "focal", "ce", "iou", "prompts")


def mean_over_processes(stats: dict[str, float], world: int) -> dict[str, float]:
    """``stats`` (STAT_KEYS; a missing one is 0) averaged over the ``world`` processes, prompts
    summed; under DDP every process must call it."""
    vec = torch.tensor([stats.get(k, 0.0) for k in STAT_KEYS], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(vec)
        vec[:-1] /= world  # prompts (last) stay a sum
    return dict(zip(STAT_KEYS, vec.tolist()))


class RunLogs:
    """metrics.csv and TensorBoard events in ``run_dir``, opened at ``step``: rows and events of
    later steps (which a resumed run writes again) are dropped; ``cfg`` goes to config.yaml."""

    def __init__(self, run_dir: Path, cfg: dict, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = run_dir / "metrics.csv"
        rows = metric_rows(self.csv_path, step) if self.csv_path.is_file() else []
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.csv_path, buf.getvalue())
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1)

    def write(self, step: int, epoch: int, lr: float, stats: dict[str, float],
              images_per_s: float) -> None:
        """One metrics.csv row (``stats``: mean_over_processes's) and its TensorBoard scalars."""
        row = {"step": step, "epoch": epoch, "lr": lr, **stats, "images_per_s": images_per_s}
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)
        for k, v in row.items():
            if k not in ("step", "epoch"):
                self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        self.writer.close()
