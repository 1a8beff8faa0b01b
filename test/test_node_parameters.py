"""node_parameters: the parameter table, its checks and the mapping onto EverythingSettings."""
from __future__ import annotations

import re
import subprocess
import sys

import yaml
from rclpy.parameter import Parameter

from ros_helpers import PARAMS_FILE
from saom_ros.everything_settings import EverythingSettings
from saom_ros.model_config import DEFAULT_CHECKPOINT
from saom_ros.node_parameters import (ENGINE_PARAMETERS, FROM_CHECKPOINT, engine_fields,
                                      parameter_table, validate)


def test_defaults_come_from_engine_settings_and_match_the_params_file():
    engine = EverythingSettings()
    table = {name: default for name, default, _ in parameter_table()}
    assert set(FROM_CHECKPOINT) == set(ENGINE_PARAMETERS) - {"compile"}
    for name, field in ENGINE_PARAMETERS.items():
        if name in FROM_CHECKPOINT:  # declared unset, of the engine default's type
            assert isinstance(table[name], Parameter.Type), name
            assert Parameter.Type.from_parameter_value(getattr(engine, field)) == table[name]
        else:
            assert table[name] == getattr(engine, field), name
    text = PARAMS_FILE.read_text()
    documented = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert set(documented) == set(table) - set(FROM_CHECKPOINT)  # nothing pinned, nothing extra
    for name, value in documented.items():
        assert value == table[name], name
    for name in FROM_CHECKPOINT:  # documented, commented out, with the generator's default
        value = getattr(engine, ENGINE_PARAMETERS[name])
        assert re.search(rf"^ +# {name}: {value}\b", text, re.M), name
    assert table["checkpoint"] == ""  # the packaged model, as in config/saom.yaml and README
    assert DEFAULT_CHECKPOINT.parent.name == "data" and DEFAULT_CHECKPOINT.name == "saom_small.pt"


def test_the_readme_parameter_table_has_a_row_for_every_parameter():
    readme = (PARAMS_FILE.parents[1] / "README.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", readme, re.M))
    assert [name for name, _, _ in parameter_table() if name not in rows] == []


def test_every_parameter_has_a_description():
    assert all(desc.description for _, _, desc in parameter_table())


def test_validate_names_the_problem_and_accepts_good_values():
    assert "cuda:N" in validate(Parameter("device", value="gpu"))
    assert validate(Parameter("device", value="cuda:1")) is None
    assert "vit_h" in validate(Parameter("model_type", value="vit_q"))
    assert "best_effort" in validate(Parameter("input_reliability", value="sometimes"))
    assert validate(Parameter("pred_iou_thresh", value=0.3)) is None
    assert "grid, hierarchical, streaming" in validate(Parameter("prompt_strategy", value="fast"))
    assert validate(Parameter("prompt_strategy", value="streaming")) is None


def test_engine_fields_maps_set_node_parameters_onto_engine_fields():
    fields = engine_fields({"min_mask_area": 25, "pred_iou_thresh": 0.3, "device": "cpu",
                            "box_nms_thresh": None})  # None: unset
    assert fields == {"min_mask_region_area": 25, "pred_iou_thresh": 0.3}


def test_the_parameter_table_loads_without_torch() -> None:
    """The launch file builds its arguments from this table: it must not pay torch's import."""
    code = ("import sys, saom_ros.node_parameters as p; p.parameter_table(); "
            "print(sorted(m for m in ('torch', 'segment_anything', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_gives_every_parameter_range_as_the_descriptors_check_it():
    readme = " ".join((PARAMS_FILE.parents[1] / "README.md").read_text().split())
    for name, _, descriptor in parameter_table():
        ranges = descriptor.integer_range or descriptor.floating_point_range
        if ranges:
            low, high = (f"{v:g}" if isinstance(v, float) else str(v)
                         for v in (ranges[0].from_value, ranges[0].to_value))
            assert f"`{name}` {low}–{high}" in readme, name
