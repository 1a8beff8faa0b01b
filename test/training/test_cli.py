"""`saom-train` from end to end: collect (stand-in simulator) -> train -> evaluate -> export ->
the node's loader; and clear errors for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saom_ros.everything import EverythingEngine
from saom_ros.everything_settings import RUNTIME_FIELDS, EverythingSettings
from saom_ros.model import ModelConfig, build_saom, load_model
from saom_ros.training.cli import _attach_negative_lists, main
from saom_ros.training.datasets import CocoInstances
from saom_ros.training.train_state import load_train_state
from test_ai2thor_collect import Simulators, free_ports
from test_finetune import make_dataset

SHIPPED = Path(__file__).resolve().parents[2] / "saom_ros" / "data" / "saom_small.pt"
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
    state = load_train_state(run / "checkpoints/last.pt")
    assert state["step"] == 1 and state["config"]["model"]["model_type"] == "tiny"


def test_config_file_and_overrides(tmp_path):
    data = make_dataset(tmp_path / "d", n=2)
    (tmp_path / "my.yaml").write_text("optim:\n  lr: 0.002\ntrain:\n  max_steps: 1\n")
    assert main(["train", "-c", str(tmp_path / "my.yaml"), "--data", str(data), "--run-dir",
                 str(tmp_path / "run"), *TRAIN_SETTINGS, "--set", "loss.iou=0"]) == 0
    cfg = load_train_state(tmp_path / "run/checkpoints/last.pt")["config"]
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


def test_evaluate_refuses_repeated_names_and_no_protocol(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n=1)
    twins = [tmp_path / run / "saom.pt" for run in ("a", "b")]  # stems name them both "saom"
    for path in twins:
        path.parent.mkdir()
        path.write_bytes(SHIPPED.read_bytes())
    argv = ["evaluate", "--data", str(data), "--checkpoint", str(twins[0]), "--checkpoint",
            str(twins[1]), "--out", str(tmp_path / "eval"), "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    assert f"'saom' names {twins[0]}, {twins[1]}; give them distinct names with --names" \
        in capsys.readouterr().err
    assert main([*argv, "--names", "A,B", "--protocol", ","]) == 2
    assert "error: no protocol to run" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_path_mistakes_are_clear_errors_found_before_the_work(tmp_path, capsys, monkeypatch):
    from saom_ros.training import finetune
    data = make_dataset(tmp_path / "d", n=1)  # d/ holds annotations.json
    afile = tmp_path / "afile"
    afile.write_text("hi")

    def no_model(*_args):
        raise AssertionError("the model was built before the run dir was checked")

    monkeypatch.setattr(finetune, "init_model", no_model)
    cases = [
        (["train", "--data", str(data.parent), "--run-dir", str(tmp_path / "run"),
          *TRAIN_SETTINGS], f"dataset {data.parent} is a folder; pass its {data}"),
        (["train", "--data", str(data), "--run-dir", str(afile), *TRAIN_SETTINGS],
         f"run dir {afile} is a file, not a folder"),
        (["train", "--data", str(data), "--run-dir", str(afile / "run"), *TRAIN_SETTINGS],
         f"run dir {afile / 'run'}: {afile} is a file, not a folder"),
        (["evaluate", "--data", str(data), "--checkpoint", str(SHIPPED), "--out", str(afile)],
         f"--out {afile} is a file, not a folder"),
        (["export", str(SHIPPED), "-o", str(tmp_path)],
         f"-o {tmp_path} is a folder; name the checkpoint file to write, e.g. "
         f"{tmp_path / 'saom.pt'}"),
        (["synth", str(afile), "-n", "1"], f"error: {afile}: File exists"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert afile.read_text() == "hi" and not (tmp_path / "saom.pt").exists()


def test_export_says_which_speed_settings_it_does_not_carry(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert main(["export", str(SHIPPED), "-o", str(out), "--everything", "points_per_batch=8",
                 "--everything", "compile=true", "--everything", "pred_iou_thresh=0.5"]) == 0
    printed = capsys.readouterr()
    assert "warning: --everything compile, points_per_batch not written: checkpoints carry no " \
        "speed/memory settings" in printed.err and "the node's parameters set them" in printed.err
    assert f"wrote {out}" in printed.out
    assert load_model(out).everything["pred_iou_thresh"] == 0.5


def test_collect_takes_a_negative_range_as_its_help_writes_it(tmp_path, capsys):
    argv = ["collect", "--output", str(tmp_path / "out"), "--simulator-port", "1"]
    # reaches the range check (argparse alone would take -40,50 for an option)
    assert main([*argv, "--horizon-range", "-40,50", "--width", "-2"]) == 2
    err = capsys.readouterr().err
    assert "--width -2: must be >= 1; --horizon-range '-40,50': must be MIN <= MAX" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["-1e1,50", "-.5,1"])
def test_collect_takes_negative_ranges_in_every_number_form(value, tmp_path, capsys):
    argv = ["collect", "--output", str(tmp_path / "out"), "--simulator-port", "1"]
    assert main([*argv, "--horizon-range", value, "--width", "-2"]) == 2
    err = capsys.readouterr().err
    assert "--width -2: must be >= 1" in err and "horizon-range" not in err


def test_nothing_after_a_double_dash_is_joined_to_an_option():
    assert _attach_negative_lists(["synth", "--", "--seed", "-1,2"]) == \
        ["synth", "--", "--seed", "-1,2"]


@pytest.mark.parametrize("extra, message", [
    (["--set", "optim.betas=0.9"], "optim.betas must be a list of two numbers"),
    (["--set", "train.epochs=0"], "train.epochs must be an integer >= 1, not 0"),
    (["--stop-after", "-1"], "--stop-after must be a positive number of steps, not -1"),
])
def test_bad_training_values_are_clear_errors(extra, message, tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n=1)
    assert main(["train", "--data", str(data), "--run-dir", str(tmp_path / "run"),
                 *TRAIN_SETTINGS, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_rerun_needs_resume_or_overwrite_and_damaged_checkpoints_are_clear(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n=2)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--run-dir", str(run), *TRAIN_SETTINGS]
    assert main([*argv, "--max-steps", "3", "--set", "train.checkpoint_every=1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--max-steps", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--max-steps", "1", "--overwrite"]) == 0
    printed = Path(capsys.readouterr().out.split("checkpoint: ")[1].strip())
    assert printed.is_file() and load_train_state(printed)["step"] == 1

    (run / "checkpoints/last.pt").write_bytes(b"\x80\x02junk")  # step 1 too: a hard link
    for source in (run, run / "checkpoints/last.pt"):
        assert main(["export", str(source), "-o", str(tmp_path / "x.pt")]) == 2
        err = capsys.readouterr().err
        assert f"{run / 'checkpoints/last.pt'} is not a checkpoint" in err
        assert "Traceback" not in err and "weights_only=False" not in err
    with pytest.raises(SystemExit):
        main([*argv, "--resume", "--overwrite"])


def test_export_help_names_every_kind_of_source(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "SAOM or official SAM checkpoint" in help_text and "training checkpoint" in help_text


def test_unknown_subcommand_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code == 2
    assert "collect" in capsys.readouterr().err


def test_export_carries_everything_settings_and_evaluate_uses_them(tmp_path):
    data = make_dataset(tmp_path / "d", n=1)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--run-dir", str(run), "--max-steps", "1",
                 *TRAIN_SETTINGS, "--set", "evaluate.everything.box_nms_thresh=0.3"]) == 0
    out = tmp_path / "saom.pt"
    assert main(["export", str(run), "-o", str(out), "--everything", "pred_iou_thresh=0.25",
                 "--everything", "stability_score_thresh=0"]) == 0
    model = load_model(out)
    # the run's evaluate section, its grid from the training assignment, then the options
    assert model.everything["points_per_side"] == 8
    assert model.everything["box_nms_thresh"] == 0.3
    assert model.everything["pred_iou_thresh"] == 0.25
    assert model.everything["stability_score_thresh"] == 0.0
    assert not RUNTIME_FIELDS & set(model.everything)  # the run's points_per_batch stays behind

    again = tmp_path / "again.pt"  # re-export: only the carried settings change
    assert main(["export", str(out), "-o", str(again), "--everything", "points_per_side=4"]) == 0
    changed = load_model(again)
    assert changed.everything == {**model.everything, "points_per_side": 4}
    assert changed.metadata == model.metadata and changed.metadata["step"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(changed.state_dict()[k], v), k

    def evaluated(*options: str) -> dict:
        assert main(["evaluate", "--data", str(data), "--checkpoint", str(again), "--out",
                     str(tmp_path / "eval"), "--protocol", "everything", "--device", "cpu",
                     "--no-progress", *options]) == 0
        results = json.loads((tmp_path / "eval/results.json").read_text())
        return results["models"]["again"]["everything_settings"]

    assert {k: evaluated()[k] for k in changed.everything} == changed.everything
    assert "- again: points_per_side 4, " in (tmp_path / "eval/results.md").read_text()
    explicit = evaluated("--everything", "points_per_side=2",
                         "--set", "evaluate.everything.pred_iou_thresh=0.5")
    assert explicit["points_per_side"] == 2 and explicit["pred_iou_thresh"] == 0.5
    assert explicit["box_nms_thresh"] == 0.3  # still the checkpoint's


@pytest.mark.parametrize("argv, message", [
    (["export", str(SHIPPED), "-o", "/tmp/never.pt", "--everything", "pred_iou=0.5"],
     "unknown setting 'pred_iou'"),
    (["export", str(SHIPPED), "-o", "/tmp/never.pt", "--everything", "evaluate.x=1"],
     "expected FIELD=VALUE"),
    (["export", str(SHIPPED), "-o", "/tmp/never.pt", "--everything", "points_per_side=many"],
     "points_per_side must be of type int"),
])
def test_bad_everything_options_are_clear_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not Path("/tmp/never.pt").exists()
