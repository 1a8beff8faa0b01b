"""Tests for training/train_state.py: model_from_state (the model a training checkpoint holds) and
layout_diff (what a resume must find unchanged besides the config)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from saom_ros.classes import SAOM_CLASSES
from saom_ros.model import CheckpointError, Saom
from saom_ros.training.train_state import layout_diff, model_from_state
from test_model import refuse_real_builds


def _state(model: Saom) -> dict:
    """The model part of a training checkpoint (what model_from_state reads)."""
    return {"model_config": dataclasses.asdict(model.config),
            "class_names": list(model.class_names), "model": model.state_dict()}


def test_model_from_state_round_trip(tiny_model: Saom) -> None:
    model = model_from_state(_state(tiny_model), Path("last.pt"))
    assert model.config == tiny_model.config and model.class_names == SAOM_CLASSES
    assert not model.training
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("field, value, named", [
    ("model_config", {"patch_size": 0}, "patch_size"),
    ("model_config", {"encoder_depth": "2"}, "encoder_depth"),
    ("model_config", [1, 2], "'model_config'"),
    ("class_names", "abc", "'class_names'"),
    ("model", [1, 2], "'model'"),
])
def test_malformed_model_parts_name_file_and_field(tiny_model: Saom, field: str, value,
                                                   named: str) -> None:
    state = _state(tiny_model)
    state[field] = {**state[field], **value} if isinstance(value, dict) else value
    with pytest.raises(CheckpointError, match="training checkpoint runs/a/last.pt") as err:
        model_from_state(state, "runs/a/last.pt")
    assert named in str(err.value)


def test_a_huge_model_config_is_refused_before_building(tiny_model: Saom,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(tiny_model)
    state["model_config"].update(encoder_embed_dim=8192, encoder_depth=64, encoder_num_heads=64,
                                 encoder_global_attn_indexes=[1])  # ~200 GB of weights
    refuse_real_builds(monkeypatch)
    with pytest.raises(CheckpointError, match="^training checkpoint: architecture mismatch: "
                                              "missing: .*wrong shape"):
        model_from_state(state)


LAYOUT = {"world_size": 2, "images": 8, "steps_per_epoch": 4, "total_steps": 4}


def test_layout_diff_names_both_process_counts():
    assert layout_diff(LAYOUT, dict(LAYOUT)) == []
    diff = layout_diff(LAYOUT, {**LAYOUT, "world_size": 1, "steps_per_epoch": 8,
                                "total_steps": 8})
    assert diff[0] == "it was written with 2 processes, this run has 1"
    assert "4 steps per epoch, this run has 8" in diff[1] and "4 total steps" in diff[2]
    assert diff[-1].startswith("resume it with 2 process(es)")


def test_layout_diff_names_a_changed_set_of_trainable_images():
    assert layout_diff(LAYOUT, {**LAYOUT, "images": 9}) == [
        "it was written with 8 trainable images, this run has 9"]


def test_a_checkpoint_without_a_layout_is_not_checked():
    assert layout_diff(None, LAYOUT) == []
