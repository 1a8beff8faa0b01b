"""scripts/reproduce_results.py: the experiment's stages and one end-to-end run in miniature."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from saom_ros.model import load_model
from saom_ros.training.synthetic import SYNTH_CLASSES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce_results.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablations_differ_from_saom_by_one_switch():
    script = load_script()
    specs = script.stage_specs(yaml.safe_load(script.EXPERIMENT.read_text()))
    assert set(specs) == set(script.TITLES)
    assert specs["baseline"]["data"] == "parts" and specs["baseline"]["init"] is None
    saom = specs["saom"]
    assert saom["data"] == "objects" and saom["init"] == "baseline"
    assert "assignment.prompt_mode=nearest" in saom["overrides"]
    for name, switch in (("no_nearest_neighbour", "assignment.prompt_mode=random"),
                         ("no_iou_loss", "loss.iou=0.0")):
        assert specs[name]["overrides"] == [*saom["overrides"], switch]
        assert (specs[name]["data"], specs[name]["init"]) == (saom["data"], saom["init"])


@pytest.mark.slow
def test_end_to_end_in_miniature(tmp_path: Path):
    exp = yaml.safe_load((ROOT / "config" / "experiment.yaml").read_text())
    exp["data"] = {"train": {"num_images": 8, "seed": 0}, "test": {"num_images": 3, "seed": 1},
                   "demo_frames": 2}
    for stage in exp["stages"].values():
        stage["overrides"] = [o for o in stage.get("overrides", [])
                              if not o.startswith("train.max_steps")] + ["train.max_steps=4"]
    exp["common_overrides"] = [o for o in exp["common_overrides"]
                               if not o.startswith("data.num_workers")] + ["data.num_workers=0"]
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(exp))
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--config", str(config), "--work", str(tmp_path / "work"),
           "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "docs" / "results.json").read_text())
    for name in ("baseline", "saom"):
        assert 0.0 <= results[name]["miou"] <= 1.0 and 0.0 <= results[name]["macc"] <= 1.0
    assert set(results["evaluation"]["models"]) == {"baseline", "saom", "no_nearest_neighbour",
                                                    "no_iou_loss"}
    assert not results["evaluation"]["models"]["baseline"]["class_aware"]
    model = load_model(out / "saom_ros" / "data" / "saom_small.pt")
    assert model.class_names == SYNTH_CLASSES
    assert {k: model.everything[k] for k in exp["demo"]} == exp["demo"]  # carries its settings
    assert len(list((out / "saom_ros" / "data" / "demo_frames").glob("*.png"))) == 2
    report = (out / "docs" / "results.md").read_text()
    assert "mIoU points" in report and "SAOM-small" in report
    # Finished stages are skipped when the script runs again.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already trained") == 4
