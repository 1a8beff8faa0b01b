"""node_parameters: the parameter table, its checks and the mapping onto EverythingSettings."""
from __future__ import annotations

import yaml
from rclpy.parameter import Parameter

from ros_helpers import PARAMS_FILE
from saom_ros.everything import EverythingSettings
from saom_ros.node_parameters import (DEFAULT_CHECKPOINT, ENGINE_PARAMETERS, engine_settings,
                                      parameter_table, validate)


def test_declared_defaults_come_from_engine_settings_and_match_the_params_file():
    engine = EverythingSettings()
    table = {name: default for name, default, _ in parameter_table()}
    for name, field in ENGINE_PARAMETERS.items():
        assert table[name] == getattr(engine, field), name
    documented = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]
    assert set(documented) == set(table)  # every parameter documented, nothing extra
    for name, value in documented.items():
        if name != "checkpoint":  # documented as "" = the packaged default
            assert value == table[name], name
    assert table["checkpoint"] == str(DEFAULT_CHECKPOINT)
    assert DEFAULT_CHECKPOINT.parent.name == "data" and DEFAULT_CHECKPOINT.name == "saom_small.pt"


def test_every_parameter_has_a_description():
    assert all(desc.description for _, _, desc in parameter_table())


def test_validate_names_the_problem_and_accepts_good_values():
    assert "cuda:N" in validate(Parameter("device", value="gpu"))
    assert validate(Parameter("device", value="cuda:1")) is None
    assert "vit_h" in validate(Parameter("model_type", value="vit_q"))
    assert "best_effort" in validate(Parameter("input_reliability", value="sometimes"))
    assert validate(Parameter("pred_iou_thresh", value=0.3)) is None


def test_engine_settings_maps_node_names_onto_engine_fields():
    base = EverythingSettings(points_per_side=8)
    settings = engine_settings({"min_mask_area": 25, "pred_iou_thresh": 0.3, "device": "cpu"}, base)
    assert (settings.min_mask_region_area, settings.pred_iou_thresh, settings.points_per_side) \
        == (25, 0.3, 8)
    assert engine_settings({}) == EverythingSettings()
