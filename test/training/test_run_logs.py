"""A training run's logs: metrics.csv rows kept up to the resumed step, TensorBoard scalars."""
from __future__ import annotations

import csv
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from saom_ros.training.run_logs import RunLogs, mean_over_processes


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _write_steps(logs: RunLogs, steps: range, loss_offset: float) -> None:
    for step in steps:
        logs.write(step, 0, 0.1, mean_over_processes({"loss": step + loss_offset}, 1), 2.0)


def test_rows_and_tensorboard_scalars_of_each_step(tmp_path):
    run = tmp_path / "runs/new"  # made on opening
    logs = RunLogs(run, {"train": {"max_steps": 3}}, 0)
    logs.write(1, 0, 0.1, mean_over_processes({"loss": 0.5, "ce": 0.25, "prompts": 7.0}, 1),
               3.0)
    logs.close()
    assert _rows(run) == [{"step": "1", "epoch": "0", "lr": "0.1", "loss": "0.5", "dice": "0.0",
                           "focal": "0.0", "ce": "0.25", "iou": "0.0", "prompts": "7.0",
                           "images_per_s": "3.0"}]
    assert yaml.safe_load((run / "config.yaml").read_text()) == {"train": {"max_steps": 3}}
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == [
        f"train/{k}" for k in sorted(("lr", "loss", "dice", "focal", "ce", "iou", "prompts",
                                      "images_per_s"))]
    assert [(e.step, e.value) for e in events.Scalars("train/prompts")] == [(1, 7.0)]


def test_reopening_at_a_step_drops_later_rows_and_events_and_malformed_rows(tmp_path, capsys):
    run = tmp_path / "r"
    logs = RunLogs(run, {}, 0)
    _write_steps(logs, range(1, 4), 0.0)
    logs.close()
    with open(run / "metrics.csv", "a") as f:
        f.write("garbage\n1,,,,,,,,,\n3,0,1,1,1,1,1,1,1,1\n")  # junk, torn, beyond the resume
    logs = RunLogs(run, {}, 2)  # a run resumed from step 2
    assert f"{run / 'metrics.csv'}: dropped 2 malformed row(s)" in capsys.readouterr().err
    assert [int(r["step"]) for r in _rows(run)] == [1, 2]
    _write_steps(logs, range(3, 5), 10.0)
    logs.close()
    rows = _rows(run)
    assert [(int(r["step"]), float(r["loss"])) for r in rows] == [(1, 1), (2, 2), (3, 13), (4, 14)]
    assert all(all(v not in ("", None) for v in r.values()) for r in rows)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]
