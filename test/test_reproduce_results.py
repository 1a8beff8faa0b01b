"""scripts/reproduce_results.py: the experiment's stages and one end-to-end run in miniature."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from saom_ros.everything_settings import RUNTIME_FIELDS
from saom_ros.model import load_model
from saom_ros.training.synthetic_scenes import SYNTH_CLASSES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce_results.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablations_and_the_hypothesis_differ_from_the_paper_by_one_switch():
    script = load_script()
    specs = script.stage_specs(yaml.safe_load(script.EXPERIMENT.read_text()))
    assert set(specs) == set(script.TITLES)
    assert specs["baseline"]["data"] == "parts" and specs["baseline"]["init"] is None
    paper = specs["saom_paper"]
    assert paper["data"] == "objects" and paper["init"] == "baseline"
    assert "assignment.prompt_mode=nearest" in paper["overrides"]
    assert "model.freeze_encoder=true" in paper["overrides"]
    for name, switch in (("no_nearest_neighbour", "assignment.prompt_mode=random"),
                         ("no_iou_loss", "loss.iou=0.0"),
                         ("multi_point", "assignment.prompt_mode=multi")):
        assert specs[name]["overrides"] == [*paper["overrides"], switch]
        assert (specs[name]["data"], specs[name]["init"]) == (paper["data"], paper["init"])
    shipped = specs["saom"]
    assert (shipped["data"], shipped["init"]) == (paper["data"], paper["init"])
    assert shipped["overrides"][:len(paper["overrides"])] == paper["overrides"]


def test_every_model_is_evaluated_with_the_settings_the_shipped_model_carries():
    exp = yaml.safe_load((ROOT / "config" / "experiment.yaml").read_text())
    evaluated = {"points_per_side": exp["evaluate"]["points_per_side"],
                 **exp["evaluate"]["everything"]}
    assert {k: evaluated[k] for k in exp["demo"]} == exp["demo"]
    assert set(evaluated) - set(exp["demo"]) <= RUNTIME_FIELDS


def test_targets_are_checked_against_the_shipped_model():
    script = load_script()
    row = {"miou": 0.55, "class_accuracy": 0.69,
           "per_class_iou": {"Bed": 0.31, "Sofa": 0.29, "Mug": 0.8}}
    targets = script.check_targets(row, {"miou_relative": 40.0}, checkpoint_mb=2.5,
                                   total_min=61.0)
    assert targets["miou"]["met"] and targets["checkpoint_mb"]["met"]
    assert targets["miou_relative_gain_pct"]["met"]
    assert not targets["class_accuracy"]["met"] and not targets["total_min"]["met"]
    assert targets["min_class_iou"] == {"target": 0.30, "measured": 0.29, "met": False,
                                        "class": "Sofa"}


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
    script = load_script()
    for name in script.TITLES:
        assert 0.0 <= results[name]["miou"] <= 1.0 and 0.0 <= results[name]["macc"] <= 1.0
        assert set(results[name]["per_class_iou"]) <= set(SYNTH_CLASSES)
    assert set(results["evaluation"]["models"]) == set(script.TITLES)
    assert set(results["targets"]) == set(script.TARGETS)
    assert set(results["former_settings"]) == {"settings", *script.FORMER}
    assert not results["evaluation"]["models"]["baseline"]["class_aware"]
    model = load_model(out / "saom_ros" / "data" / "saom_small.pt")
    assert model.class_names == SYNTH_CLASSES
    assert {k: model.everything[k] for k in exp["demo"]} == exp["demo"]  # carries its settings
    assert len(list((out / "saom_ros" / "data" / "demo_frames").glob("*.png"))) == 2
    report = (out / "docs" / "results.md").read_text()
    assert "mIoU points" in report and "SAOM-small" in report
    # Finished stages are skipped when the script runs again.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert again.stdout.count("already trained") == len(script.TITLES)
