"""Fine-tuning: it learns, resumes exactly, caches embeddings without changing the result, and
DDP over 2 gloo processes matches one process with the same global batch."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from processes import alive, children, wait_for
from saom_ros.model import CheckpointError, ModelConfig, Saom, build_saom, load_model
from saom_ros.training.config import check_device, load_config, validate_config
from saom_ros.training.coco_masks import mask_to_annotation
from saom_ros.training.datasets import coco_categories, open_dataset, write_coco, write_image
from saom_ros.training.export import export
from saom_ros.training.finetune import Trainer, TrainingInterrupted, init_model, train
from saom_ros.training.train_state import config_diff, load_train_state, model_from_state

CLASSES = ("Mug", "Vase", "Laptop")
COLOURS = {1: (210, 60, 50), 2: (50, 200, 70), 3: (60, 80, 220)}


def make_dataset(root: Path, n: int = 4, hw: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """A small COCO dataset of coloured rectangles and ellipses (class = colour), written with
    the datasets helpers; images are not square so that frame handling matters."""
    rng = np.random.default_rng(seed)
    h, w = hw
    images, anns = [], []
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        img = np.full((h, w, 3), 90, np.uint8)
        img[..., 2] = (xx * 120 // w).astype(np.uint8)  # a gradient, not a flat background
        drawn = np.zeros((h, w), bool)
        for k in range(3):
            cls = 1 + (i + k) % 3
            cy, cx = rng.integers(18, h - 18), rng.integers(18, w - 18)
            ry, rx = rng.integers(8, 18), rng.integers(8, 24)
            m = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) if k % 2 else \
                ((abs(yy - cy) <= ry) & (abs(xx - cx) <= rx))
            m &= ~drawn  # earlier objects stay in front
            if m.sum() < 30:
                continue
            drawn |= m
            img[m] = COLOURS[cls]
            anns.append(mask_to_annotation(m, len(anns) + 1, i + 1, cls))
        name = f"images/{i:03d}.png"
        write_image(root / name, img)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    write_coco(root / "annotations.json", images, anns, coco_categories(CLASSES))
    return root / "annotations.json"


def tiny_config(data: Path, run_dir: Path, *overrides: str) -> dict:
    return load_config(None, [
        "model.model_type=tiny", f"data.train={data}", f"train.run_dir={run_dir}",
        "data.num_workers=0", "assignment.points_per_side=8", "train.log_every=1",
        "train.checkpoint_every=100", "train.amp=false", "train.device=cpu", "optim.lr=1e-3",
        *overrides])


def trainable_state(model: Saom) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("sam.image_encoder")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n=6)


def _final_model(run_dir: Path) -> Saom:
    return model_from_state(load_train_state(run_dir / "checkpoints/last.pt"))


def _assert_same(a: Saom, b: Saom, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if atol == 0.0:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=k)


def test_training_lowers_the_loss_and_keeps_the_encoder_frozen(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "run", "train.max_steps=40", "train.batch_size=2")
    torch.manual_seed(0)
    start = build_saom(ModelConfig.preset("tiny", len(CLASSES)), CLASSES)
    train(cfg, progress=False)
    end = _final_model(tmp_path / "run")
    with open(tmp_path / "run/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    first = np.mean([float(r["loss"]) for r in rows[:3]])
    last = np.mean([float(r["loss"]) for r in rows[-3:]])
    assert last < 0.8 * first, (first, last)
    assert float(rows[0]["prompts"]) > 0
    for k, v in start.state_dict().items():  # same seed -> same initial weights
        if k.startswith("sam.image_encoder"):
            assert torch.equal(v, end.state_dict()[k]), k
    assert any(not torch.equal(v, trainable_state(end)[k]) for k, v in
               trainable_state(start).items())
    assert (tmp_path / "run/tensorboard").is_dir()
    assert list((tmp_path / "run/embedding_cache").rglob("*.pt"))


def test_resumed_run_equals_unbroken_run(dataset, tmp_path):
    straight = tiny_config(dataset, tmp_path / "a", "train.max_steps=6", "optim.warmup_steps=2")
    train(straight, progress=False)
    broken = tiny_config(dataset, tmp_path / "b", "train.max_steps=6", "optim.warmup_steps=2")
    first = train(broken, stop_after=3, progress=False)
    assert first.name == "step_00000003.pt"
    train(broken, resume=True, progress=False)
    _assert_same(_final_model(tmp_path / "a"), _final_model(tmp_path / "b"))
    a_state = load_train_state(tmp_path / "a/checkpoints/last.pt")
    b_state = load_train_state(tmp_path / "b/checkpoints/last.pt")
    assert a_state["step"] == b_state["step"] == 6
    assert a_state["scheduler"] == b_state["scheduler"]
    with open(tmp_path / "b/metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_different_config(dataset, tmp_path):
    train(tiny_config(dataset, tmp_path / "r", "train.max_steps=1"), progress=False)
    other = tiny_config(dataset, tmp_path / "r", "train.max_steps=1", "optim.lr=5e-4")
    with pytest.raises(ValueError, match="optim.lr"):
        train(other, resume=True, progress=False)


def test_resume_refuses_another_number_of_processes(dataset, tmp_path):
    """The process count sets the global batch, the epoch's steps and the schedule's length: a
    checkpoint of 2 processes must not continue in 1 (it would run 8 steps instead of 4)."""
    cfg = tiny_config(dataset, tmp_path / "r", "train.epochs=1")
    train(cfg, stop_after=1, progress=False)
    path = tmp_path / "r/checkpoints/last.pt"
    state = load_train_state(path)
    assert state["layout"] == {"world_size": 1, "images": 6, "steps_per_epoch": 6,
                               "total_steps": 6}
    state["layout"].update(world_size=2, steps_per_epoch=3, total_steps=3)  # as torchrun wrote it
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"cannot resume from .*last.pt: it was written with 2 "
                                         r"processes, this run has 1;.*resume it with 2"):
        train(cfg, resume=True, progress=False)
    assert load_train_state(path)["step"] == 1 and _metric_steps(tmp_path / "r") == [1]


def test_resume_refuses_an_optimizer_of_other_parameters(dataset, tmp_path):
    """A run of a version that trained another set of parameters (its optimizer state has other
    groups) is refused with what to do instead, not with torch's bare size mismatch."""
    cfg = tiny_config(dataset, tmp_path / "r", "train.epochs=1")
    train(cfg, stop_after=1, progress=False)
    path = tmp_path / "r/checkpoints/last.pt"
    state = load_train_state(path)
    state["optimizer"]["param_groups"][0]["params"].append(
        max(state["optimizer"]["param_groups"][0]["params"]) + 1)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"cannot resume from .*last.pt: its optimizer trained "
                                         r"other parameters.*--init"):
        train(cfg, resume=True, progress=False)


def _without_trainable_masks(root: Path) -> Path:
    """make_dataset's 4 images, image 2 without annotations and image 3 with only a 3 x 3 px
    speck (under half of any 8 x 8 px embedding cell: the assignment drops it)."""
    path = make_dataset(root, n=4)
    data = json.loads(path.read_text())
    speck = np.zeros((96, 128), bool)
    speck[40:43, 60:63] = True
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in (2, 3)]
    data["annotations"].append(mask_to_annotation(speck, 99, 3, 1))
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("freeze, warned", [(True, True), (False, False)])
def test_a_frozen_random_encoder_is_warned_about(dataset, tmp_path, capsys, freeze, warned):
    """No --init with the encoder frozen trains the decoder on random features: say so."""
    train(tiny_config(dataset, tmp_path / "r", "train.max_steps=1",
                      f"model.freeze_encoder={str(freeze).lower()}"), progress=False)
    assert ("the frozen image encoder keeps its random weights" in capsys.readouterr().err) \
        is warned


def test_frames_without_trainable_masks_take_no_step(tmp_path, capsys):
    data = _without_trainable_masks(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "r", "train.epochs=2", "train.checkpoint_every=1",
                      "train.keep_checkpoints=0")
    train(cfg, progress=False)
    with open(tmp_path / "r/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # 2 images x 2 epochs
    assert all(float(r["loss"]) > 0 and float(r["prompts"]) > 0 for r in rows)
    assert "2 of 4 images have no mask to train on" in capsys.readouterr().err
    trainer = Trainer(cfg, progress=False)
    assert trainer.data.images == [0, 3] and trainer.total_steps == 4
    assert sorted(trainer.data.epoch_indices(0) + trainer.data.epoch_indices(1)) == [0, 0, 3, 3]
    with pytest.raises(ValueError, match="2 trainable images are fewer than one global batch"):
        Trainer(tiny_config(data, tmp_path / "n", "train.batch_size=3"), progress=False)


def test_resume_and_pruning_remove_temp_files_of_killed_writes(dataset, tmp_path):
    run = tmp_path / "r"
    cfg = tiny_config(dataset, run, "train.max_steps=4", "train.checkpoint_every=2")
    train(cfg, stop_after=2, progress=False)
    # What SIGKILL inside an atomic write leaves (mkstemp's names), and files that are not ours.
    stale = [run / "checkpoints/.step_00000004.pt.q8w_2kz1.tmp", run / ".metrics.csv.a1b2c3d4.tmp"]
    foreign = [run / "checkpoints/notes.tmp", run / "user.txt"]
    for path in stale + foreign:
        path.write_bytes(b"half")
    train(cfg, resume=True, stop_after=1, progress=False)  # step 3: no save yet
    assert not any(p.exists() for p in stale) and all(p.exists() for p in foreign)

    trainer = Trainer(cfg, progress=False)
    trainer.load(run / "checkpoints/last.pt")
    stale[0].write_bytes(b"half")  # left by a kill during a save of this run: pruning clears it
    trainer.save()
    assert not stale[0].exists() and all(p.exists() for p in foreign)


@pytest.mark.slow
def test_dataloader_workers_die_with_a_killed_training_run(dataset, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "saom_ros.training.cli", "train", "--data", str(dataset),
         "--run-dir", str(tmp_path / "run"), "--model-type", "tiny", "--device", "cpu",
         "--no-progress", "--set", "data.num_workers=2", "--set", "assignment.points_per_side=8",
         "--set", "train.amp=false", "--set", "train.epochs=100000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = wait_for(lambda: len(children(proc.pid)) == 2 and children(proc.pid), 180)
        assert workers, "the DataLoader workers never started"
        time.sleep(2)  # training, not starting up
    finally:
        proc.kill()
        proc.wait()
    assert wait_for(lambda: not any(alive(pid) for pid in workers), 5), \
        f"orphaned DataLoader workers: {[pid for pid in workers if alive(pid)]}"


def test_embedding_cache_changes_nothing_but_skips_the_encoder(dataset, tmp_path, monkeypatch):
    calls = []
    embed = Saom.embed

    def counting_embed(self, images):
        calls.append(images.shape[0])
        return embed(self, images)

    monkeypatch.setattr(Saom, "embed", counting_embed)
    common = ("train.max_steps=2", "train.batch_size=2", f"train.embedding_cache={tmp_path / 'c'}")
    train(tiny_config(dataset, tmp_path / "nocache", *common[:2],
                      "train.embedding_cache=false"), progress=False)
    uncached_calls = len(calls)
    train(tiny_config(dataset, tmp_path / "fill", *common), progress=False)
    calls.clear()
    train(tiny_config(dataset, tmp_path / "hit", *common), progress=False)
    assert uncached_calls == 4 and calls == []  # 2 steps x 2 images; then all from disk
    _assert_same(_final_model(tmp_path / "nocache"), _final_model(tmp_path / "fill"))
    _assert_same(_final_model(tmp_path / "nocache"), _final_model(tmp_path / "hit"))


def test_gradient_accumulation_equals_a_bigger_batch(dataset, tmp_path):
    train(tiny_config(dataset, tmp_path / "b2", "train.max_steps=2",
                      "train.batch_size=2"), progress=False)
    train(tiny_config(dataset, tmp_path / "acc", "train.max_steps=2",
                      "train.grad_accum=2"), progress=False)
    _assert_same(_final_model(tmp_path / "b2"), _final_model(tmp_path / "acc"), atol=1e-6)
    # metrics.csv's prompts: the step's total, however its images were split
    assert _metric_column(tmp_path / "b2", "prompts") == _metric_column(tmp_path / "acc",
                                                                        "prompts")


def test_unfrozen_class_agnostic_random_prompts(dataset, tmp_path):
    """The part-biased-baseline recipe: encoder trains, no class head, random prompts."""
    cfg = tiny_config(dataset, tmp_path / "u", "train.max_steps=2", "model.freeze_encoder=false",
                      "model.class_agnostic=true", "assignment.prompt_mode=random")
    torch.manual_seed(0)
    start = build_saom(ModelConfig.preset("tiny"))
    train(cfg, progress=False)
    end = _final_model(tmp_path / "u")
    assert end.class_head is None and end.class_names == ("object",)
    key = "sam.image_encoder.patch_embed.proj.weight"
    assert not torch.equal(start.state_dict()[key], end.state_dict()[key])
    assert not (tmp_path / "u/embedding_cache").exists()
    with open(tmp_path / "u/metrics.csv") as f:
        assert all(float(r["ce"]) == 0.0 for r in csv.DictReader(f))


def test_multi_point_prompts_with_the_encoder_training(dataset, tmp_path):
    """The shipped recipe: several grid points per object (more prompts than the nearest
    assignment's one per object), class head, encoder trained."""
    prompts, losses = {}, {}
    for name, mode, per_object in (("nearest", "nearest", "false"), ("multi", "multi", "false"),
                                   ("per_object", "multi", "true")):
        cfg = tiny_config(dataset, tmp_path / name, "train.max_steps=2",
                          "model.freeze_encoder=false", f"assignment.prompt_mode={mode}",
                          "assignment.points_per_mask=4", f"loss.per_object={per_object}")
        train(cfg, progress=False)
        with open(tmp_path / name / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        prompts[name] = sum(float(r["prompts"]) for r in rows)
        losses[name] = float(rows[0]["loss"])
        assert all(float(r["ce"]) > 0.0 for r in rows)
    assert prompts["nearest"] < prompts["multi"] <= 4 * prompts["nearest"]
    # the same prompts, weighed per object instead of per prompt
    assert prompts["per_object"] == prompts["multi"] and losses["per_object"] != losses["multi"]
    key = "sam.image_encoder.patch_embed.proj.weight"
    torch.manual_seed(0)
    start = build_saom(ModelConfig.preset("tiny", len(CLASSES)), CLASSES)
    assert not torch.equal(start.state_dict()[key],
                           _final_model(tmp_path / "multi").state_dict()[key])


def test_init_from_official_sam_file_adds_a_class_head(dataset, tmp_path):
    torch.manual_seed(1)
    sam = build_saom(ModelConfig.preset("tiny")).sam
    official = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), official)
    cfg = tiny_config(dataset, tmp_path / "i", "train.max_steps=1", f"model.init={official}")
    model = init_model(cfg, CLASSES)
    assert model.class_names == CLASSES and model.class_head.out_features == 3
    for k, v in sam.state_dict().items():
        assert torch.equal(model.sam.state_dict()[k], v)


def test_export_writes_what_the_node_loader_loads(dataset, tmp_path):
    train(tiny_config(dataset, tmp_path / "e", "train.max_steps=2"), progress=False)
    out = export(tmp_path / "e", tmp_path / "saom.pt")
    loaded = load_model(out)
    _assert_same(loaded, _final_model(tmp_path / "e"))
    assert loaded.class_names == CLASSES


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'optim.learning_rate'"):
        load_config(None, ["optim.learning_rate=1"])
    with pytest.raises(ValueError, match="data.train is not set"):
        Trainer(load_config(None, ["model.model_type=tiny"]))
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="assignment.prompt_mode must be one of nearest, random"):
        Trainer(load_config(None, ["assignment.prompt_mode=centre"]))
    with pytest.raises(ValueError, match="train.grad_accum must be an integer >= 1, not 0"):
        Trainer(load_config(None, ["train.grad_accum=0"]))


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=-1", "train.max_steps must be an integer >= 1, not -1"),
    ("train.epochs=0", "train.epochs must be an integer >= 1, not 0"),
    ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N, not 'gpu'"),
    ("optim.betas=0.9", r"optim.betas must be a list of two numbers in \[0, 1\).*not 0.9"),
    ("optim.betas=[0.9, 1.0]", r"optim.betas must be .*not \[0.9, 1.0\]"),
    ("loss.focal_alpha=abc", "loss.focal_alpha must be a number in .*, not 'abc'"),
    ("optim.lr=abc", "optim.lr must be a number .*, not 'abc'"),
    ("optim.lr=0", "optim.lr must be a number > 0, not 0"),
    ("train.seed=abc", "train.seed must be an integer .*, not 'abc'"),
    ("evaluate.max_images=abc", "evaluate.max_images must be an integer >= 1, not 'abc'"),
    ("optim.warmup_steps=-5", "optim.warmup_steps must be an integer >= 0, not -5"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints must be an integer >= 0, not -1"),
    ("train.amp=maybe", "train.amp must be true or false, not 'maybe'"),
    ("model.model_type=vit_x", "model.model_type must be one of .*, not 'vit_x'"),
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0, not -1"),
])
def test_every_bad_config_value_names_its_key(override, message):
    with pytest.raises(ValueError, match=message):
        Trainer(load_config(None, ["model.model_type=tiny", "data.train=x.json", override]))


def test_numbers_yaml_reads_as_text_become_numbers():
    cfg = load_config(None, ["optim.lr=3e-4", "loss.focal_alpha=2.5e-1"])
    validate_config(cfg)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["loss"]["focal_alpha"] == 0.25
    # a run started when they stayed text resumes: the same number is no change
    assert config_diff({"optim": {"lr": "3e-4"}}, {"optim": {"lr": 3e-4}}) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="train.device is 'cuda' but this machine has no usable"):
        check_device("cuda")


def test_a_run_dir_with_a_run_is_refused_unless_resumed_or_overwritten(dataset, tmp_path, capsys):
    run = tmp_path / "r"
    train(tiny_config(dataset, run, "train.max_steps=4", "train.checkpoint_every=1"),
          progress=False)
    again = tiny_config(dataset, run, "train.max_steps=1")
    with pytest.raises(ValueError, match=f"run dir {run} already holds a run: pass --resume .* "
                       "--overwrite"):
        train(again, progress=False)
    assert load_train_state(run / "checkpoints/last.pt")["step"] == 4  # nothing lost
    assert _metric_steps(run) == [1, 2, 3, 4]

    last = train(again, overwrite=True, progress=False)
    assert last.is_file() and last.name == "step_00000001.pt"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.pt", "step_00000001.pt"]
    assert _metric_steps(run) == [1]
    assert not (run / ".overwritten").exists()
    with pytest.raises(ValueError, match="exclude each other"):
        train(again, resume=True, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="--stop-after must be a positive number of steps, not 0"):
        train(again, resume=True, stop_after=0, progress=False)


def test_pruning_keeps_the_new_checkpoint_over_later_stale_ones(dataset, tmp_path):
    run = tmp_path / "r"
    cfg = tiny_config(dataset, run, "train.max_steps=3", "train.keep_checkpoints=1")
    train(cfg, stop_after=1, progress=False)
    stale = run / "checkpoints/step_00000009.pt"  # a damaged file of a later step
    stale.write_bytes(b"torn")
    last = train(cfg, resume=True, stop_after=1, progress=False)
    assert last.is_file() and stale.exists()
    assert not (run / "checkpoints/step_00000001.pt").exists()


def _metric_steps(run: Path) -> list[int]:
    with open(run / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _metric_column(run: Path, key: str) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f)]


def test_damaged_or_foreign_checkpoints_are_clear_errors(dataset, tmp_path):
    train(tiny_config(dataset, tmp_path / "r", "train.max_steps=1"), progress=False)
    good = (tmp_path / "r/checkpoints/last.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(good[:100000])
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"format": "saom-train-state"}, tmp_path / "hollow.pt")
    for name, problem in (("torn.pt", "torch.load failed"), ("foreign.pt", "torch.load failed"),
                          ("hollow.pt", "damaged training checkpoint")):
        with pytest.raises(CheckpointError, match=f"{tmp_path / name}.*{problem}") as err:
            load_train_state(tmp_path / name)
        assert "weights_only=False" not in str(err.value)
        with pytest.raises(CheckpointError, match=str(tmp_path / name)):
            export(tmp_path / name, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_resume_falls_back_to_the_newest_readable_checkpoint(dataset, tmp_path, capsys):
    common = ("train.max_steps=6", "train.checkpoint_every=2", "optim.warmup_steps=2")
    train(tiny_config(dataset, tmp_path / "a", *common), progress=False)
    run = tmp_path / "b"
    cfg = tiny_config(dataset, run, *common)
    train(cfg, stop_after=4, progress=False)
    with open(run / "checkpoints/last.pt", "r+b") as f:  # step_4 too: last.pt is its hard link
        f.truncate(100000)
    capsys.readouterr()
    train(cfg, resume=True, progress=False)
    err = capsys.readouterr().err
    assert f"{run / 'checkpoints/last.pt'} is not a readable training checkpoint" in err
    assert f"resuming from {run / 'checkpoints/step_00000002.pt'} instead" in err
    _assert_same(_final_model(tmp_path / "a"), _final_model(run))
    assert _metric_steps(run) == [1, 2, 3, 4, 5, 6]

    (run / "checkpoints/last.pt").write_bytes(b"junk")
    for old in (run / "checkpoints").glob("step_*.pt"):
        old.unlink()
    with pytest.raises(CheckpointError, match="last.pt is not a readable training checkpoint"):
        train(cfg, resume=True, progress=False)


def test_a_stop_signal_checkpoints_the_step_and_resumes_exactly(dataset, tmp_path, monkeypatch):
    common = ("train.max_steps=5", "optim.warmup_steps=2")
    train(tiny_config(dataset, tmp_path / "a", *common), progress=False)
    log = Trainer.log

    def log_then_signal(self, *args, **kwargs):
        log(self, *args, **kwargs)
        if self.step == 2:  # after step 2's stop check: step 3 runs, then is saved
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "log", log_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    cfg = tiny_config(dataset, tmp_path / "b", *common)
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg, progress=False)
    assert signal.getsignal(signal.SIGTERM) is before
    assert stop.value.signum == signal.SIGTERM and stop.value.step == 3
    assert stop.value.checkpoint == tmp_path / "b/checkpoints/step_00000003.pt"
    assert "--resume" in str(stop.value)
    assert load_train_state(tmp_path / "b/checkpoints/last.pt")["step"] == 3
    monkeypatch.setattr(Trainer, "log", log)
    train(cfg, resume=True, progress=False)
    _assert_same(_final_model(tmp_path / "a"), _final_model(tmp_path / "b"))
    assert _metric_steps(tmp_path / "b") == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_ctrl_c_with_dataloader_workers_checkpoints_and_resumes(dataset, tmp_path):
    """SIGINT to the whole process group, workers included, as a terminal's Ctrl-C sends it."""
    common = ("train.max_steps=1000", "train.checkpoint_every=1000",
              "train.grad_accum=6")  # a step needs more batches than the workers prefetch
    cfg = tiny_config(dataset, tmp_path / "b", *common)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "saom_ros.training.cli", "train", "-c", str(tmp_path / "cfg.yaml"),
         "--no-progress", "--set", "data.num_workers=2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: (tmp_path / "b/metrics.csv").is_file()
                        and len(_metric_steps(tmp_path / "b")) >= 2, 180), "no step was logged"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "--resume" in err and "stopped by SIGINT" in err
    step = load_train_state(tmp_path / "b/checkpoints/last.pt")["step"]
    assert f"after step {step}; checkpoint: " in err
    train(cfg, resume=True, stop_after=1, progress=False)
    train(tiny_config(dataset, tmp_path / "a", *common), stop_after=step + 1, progress=False)
    _assert_same(_final_model(tmp_path / "a"), _final_model(tmp_path / "b"))


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(dataset, tmp_path):
    """torchrun, 2 CPU processes x 1 image == 1 process x 2 images (gradients are averaged)."""
    args = ["--data", str(dataset), "--model-type", "tiny", "--max-steps", "3", "--device", "cpu",
            "--no-progress", "--set", "data.num_workers=0", "--set", "assignment.points_per_side=8",
            "--set", "train.amp=false", "--set", "optim.lr=1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "saom_ros.training.cli", "train", *args,
                    "--run-dir", str(tmp_path / "ddp"), "--set", "train.batch_size=1"],
                   check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "saom_ros.training.cli", "train", *args,
                    "--run-dir", str(tmp_path / "one"), "--set", "train.batch_size=2"],
                   check=True, env=env, timeout=300)
    _assert_same(_final_model(tmp_path / "ddp"), _final_model(tmp_path / "one"), atol=1e-5)
    for key in ("prompts", "loss"):  # prompts: the step's total, not a per-process mean
        assert _metric_column(tmp_path / "ddp", key) == pytest.approx(
            _metric_column(tmp_path / "one", key), rel=1e-6)


@pytest.mark.slow
def test_a_torchrun_checkpoint_does_not_resume_in_one_process(dataset, tmp_path):
    run = tmp_path / "ddp"
    args = ["--data", str(dataset), "--model-type", "tiny", "--device", "cpu", "--no-progress",
            "--run-dir", str(run), "--set", "data.num_workers=0", "--set",
            "assignment.points_per_side=8", "--set", "train.amp=false", "--set", "train.epochs=1"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", "-m", "saom_ros.training.cli", "train", *args,
                    "--stop-after", "2"],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert load_train_state(run / "checkpoints/last.pt")["layout"]["world_size"] == 2
    metrics = (run / "metrics.csv").read_text()
    with pytest.raises(ValueError, match="written with 2 processes, this run has 1"):
        train(load_config(run / "config.yaml"), resume=True, progress=False)
    assert load_train_state(run / "checkpoints/last.pt")["step"] == 2
    assert (run / "metrics.csv").read_text() == metrics


def test_open_dataset_reads_coco_and_saom_layouts(dataset, tmp_path):
    coco = open_dataset(dataset)
    assert coco.class_names == CLASSES and len(coco) == 6
    sample = coco[0]
    write_image(tmp_path / "img.png", sample.image)
    for k, m in enumerate(sample.masks):
        write_image(tmp_path / f"m{k}.png", np.repeat(m[..., None] * np.uint8(255), 3, 2))
    entry = {"image_name": "img.png", "entity_indices": [int(c) - 1 for c in sample.class_ids],
             "entity_masks": [f"m{k}.png" for k in range(len(sample.masks))]}
    meta = {"entity classes": list(CLASSES), "train_data": [], "val_data": [],
            "test_data": [entry]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    saom = open_dataset(tmp_path / "meta.json", "test")
    assert len(saom) == 1 and saom.class_names == CLASSES
    np.testing.assert_array_equal(saom[0].masks, sample.masks)
    np.testing.assert_array_equal(saom[0].class_ids, sample.class_ids)
    assert len(open_dataset(tmp_path / "meta.json", "train")) == 0
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        open_dataset(tmp_path / "bad.json")
