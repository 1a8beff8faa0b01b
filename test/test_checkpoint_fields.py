"""checkpoint_fields: each field of a checkpoint is checked, and a failure names the file and
the field."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from saom_ros.checkpoint_fields import (CheckpointError, check_class_count, checked_class_names,
                                        checked_config, checked_everything, checked_state)
from saom_ros.model_config import ModelConfig


def test_good_fields_pass_through() -> None:
    config = dataclasses.asdict(ModelConfig.preset("tiny"))
    assert checked_config("f.pt", "config", config) == ModelConfig(**config)
    assert checked_class_names("f.pt", "class_names", ["Bed", "Sofa"]) == ("Bed", "Sofa")
    state = {"w": torch.zeros(2, 3)}
    assert checked_state("f.pt", "state", state)["w"] is state["w"]
    assert checked_everything({"points_per_side": 16, "compile": False}, "f.pt") == {
        "points_per_side": 16, "compile": False}


@pytest.mark.parametrize("check, args, names", [
    (checked_config, ("config", ["not", "a", "dict"]), "'config'"),
    (checked_config, ("config", {"patch_size": 0}), "'config'"),
    (checked_class_names, ("class_names", "Bed"), "'class_names'"),
    (checked_class_names, ("class_names", [1, 2]), "'class_names'"),
    (checked_state, ("the state", [torch.zeros(1)]), "the state"),
    (checked_state, ("the state", {"w": torch.zeros(2, dtype=torch.int64)}), "the state"),
    (checked_state, ("the state", {"w": "text"}), "the state"),
])
def test_malformed_fields_name_the_file_and_the_field(check, args, names) -> None:
    with pytest.raises(CheckpointError, match=f"bad.pt.*{names}"):
        check("bad.pt", *args)


def test_malformed_everything_names_the_file() -> None:
    with pytest.raises(CheckpointError, match="bad.pt: 'everything'"):
        checked_everything({"points_per_side": [16]}, "bad.pt")


def test_class_count_must_agree_with_the_names_and_the_head() -> None:
    config = dataclasses.replace(ModelConfig.preset("tiny"), num_classes=2)
    head = {"class_head.weight": torch.zeros(2, 8)}
    check_class_count("f.pt", config, ("Bed", "Sofa"), head)
    with pytest.raises(CheckpointError, match="f.pt: class-count mismatch"):
        check_class_count("f.pt", config, ("Bed",), head)
    with pytest.raises(CheckpointError, match="f.pt: class-count mismatch"):
        check_class_count("f.pt", config, ("Bed", "Sofa"), {"class_head.weight": torch.zeros(3, 8)})
