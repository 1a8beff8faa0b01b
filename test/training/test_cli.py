"""`saom-train` from end to end: collect (stand-in simulator) -> train -> evaluate -> export ->
the node's loader; and clear errors for bad input."""
from __future__ import annotations

import json

import pytest
import torch

from saom_ros.everything import EverythingEngine, EverythingSettings
from saom_ros.model import ModelConfig, build_saom, load_model
from saom_ros.training import finetune
from saom_ros.training.cli import main
from saom_ros.training.datasets import CocoInstances
from test_ai2thor_collect import Simulators, free_ports
from test_finetune import make_dataset

TRAIN_SETTINGS = ["--model-type", "tiny", "--device", "cpu", "--no-progress",
                  "--set", "data.num_workers=0", "--set", "assignment.points_per_side=8",
                  "--set", "train.amp=false"]


@pytest.mark.slow
def test_collect_train_evaluate_export_load(tmp_path):
    sims = Simulators(tmp_path)
    try:
        port = free_ports(1)
        proc, _ = sims.start(port)
        assert main(["collect", "--simulator-host", "127.0.0.1", "--simulator-port", str(port),
                     "--scenes", "FloorPlan1,FloorPlan201", "--frames-per-scene", "2",
                     "--width", "128", "--height", "96", "--output", str(tmp_path / "data"),
                     "--min-area", "20", "--no-progress"]) == 0
        assert proc.wait(timeout=30) == 0
    finally:
        sims.close()
    data = tmp_path / "data/annotations.json"
    assert len(CocoInstances(data)) == 4

    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--run-dir", str(run), "--max-steps", "4",
                 *TRAIN_SETTINGS, "--set", "train.checkpoint_every=2"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == [
        "last.pt", "step_00000002.pt", "step_00000004.pt"]

    assert main(["export", str(run), "-o", str(tmp_path / "saom.pt")]) == 0
    torch.manual_seed(0)
    sam = tmp_path / "sam_tiny.pth"  # what an official class-agnostic checkpoint looks like
    torch.save(build_saom(ModelConfig.preset("tiny")).sam.state_dict(), sam)
    assert main(["evaluate", "--data", str(data), "--checkpoint", str(sam), "--checkpoint",
                 str(tmp_path / "saom.pt"), "--names", "SAM,SAOM", "--out",
                 str(tmp_path / "eval"), "--set", "evaluate.points_per_side=8",
                 "--device", "cpu", "--no-progress"]) == 0
    results = json.loads((tmp_path / "eval/results.json").read_text())
    assert list(results["models"]) == ["SAM", "SAOM"]
    assert "| SAM IoU | SAM Acc | SAOM IoU | SAOM Acc |" in (tmp_path / "eval/results.md").read_text()

    model = load_model(tmp_path / "saom.pt")  # the node's loader
    dataset = CocoInstances(data)
    assert model.class_names == dataset.class_names
    settings = EverythingSettings(points_per_side=8, pred_iou_thresh=0, stability_score_thresh=0)
    instances = EverythingEngine(model, settings, "cpu")(dataset[0].image)
    assert len(instances) > 0
    assert set(instances.class_ids.tolist()) <= set(range(1, len(model.class_names) + 1))


def test_synth_then_train_from_the_command_line(tmp_path):
    assert main(["synth", str(tmp_path / "synth"), "-n", "2", "--size", "128"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "synth/annotations.json"), "--run-dir",
                 str(run), "--max-steps", "1", *TRAIN_SETTINGS]) == 0
    state = finetune.load_train_state(run / "checkpoints/last.pt")
    assert state["step"] == 1 and state["config"]["model"]["model_type"] == "tiny"


def test_config_file_and_overrides(tmp_path):
    data = make_dataset(tmp_path / "d", n=2)
    (tmp_path / "my.yaml").write_text("optim:\n  lr: 0.002\ntrain:\n  max_steps: 1\n")
    assert main(["train", "-c", str(tmp_path / "my.yaml"), "--data", str(data), "--run-dir",
                 str(tmp_path / "run"), *TRAIN_SETTINGS, "--set", "loss.iou=0"]) == 0
    cfg = finetune.load_train_state(tmp_path / "run/checkpoints/last.pt")["config"]
    assert cfg["optim"]["lr"] == 0.002 and cfg["loss"]["iou"] == 0
    assert cfg["train"]["max_steps"] == 1 and cfg["assignment"]["points_per_side"] == 8


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/nonexistent/annotations.json", "--model-type", "tiny"],
     "does not exist"),
    (["train", "--set", "optim.learning_rate=1"], "unknown config key 'optim.learning_rate'"),
    (["export", "/nonexistent/run", "-o", "/tmp/never.pt"], "does not exist"),
    (["evaluate", "--data", "/nonexistent.json", "--checkpoint", "x.pt", "--out", "/tmp/x"],
     "does not exist"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_subcommand_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2
    assert "collect" in capsys.readouterr().err
