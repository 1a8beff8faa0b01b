"""settings_for / carried_settings (saom_ros/everything_settings.py): generator defaults, then what the
checkpoint carries, then explicit values; and the shipped checkpoint's own settings."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from saom_ros.everything import EverythingEngine
from saom_ros.everything_settings import (
    RANGES, RUNTIME_FIELDS, EverythingSettings, carried_settings, settings_for)
from saom_ros.model import Saom, load_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "saom_ros" / "data" / "saom_small.pt"


def test_without_carried_settings_the_generator_defaults_apply(tiny_model: Saom) -> None:
    assert tiny_model.everything == {}
    assert settings_for(tiny_model) == EverythingSettings()


def test_checkpoint_values_then_explicit_values(tiny_model: Saom) -> None:
    tiny_model.everything = {"points_per_side": 16, "pred_iou_thresh": 0.5, "box_nms_thresh": 1}
    s = settings_for(tiny_model, pred_iou_thresh=0.7, box_nms_thresh=None, points_per_batch=64)
    assert s.points_per_side == 16  # the checkpoint's
    assert s.pred_iou_thresh == 0.7  # explicit beats the checkpoint
    assert s.box_nms_thresh == 1.0 and isinstance(s.box_nms_thresh, float)  # None: not given
    assert s.points_per_batch == 64
    assert s.stability_score_thresh == EverythingSettings().stability_score_thresh
    assert tiny_model.everything["pred_iou_thresh"] == 0.5  # not modified


@pytest.mark.parametrize("carried, explicit, message", [
    ({"pred_iou": 0.5}, {}, "the checkpoint's everything-mode settings: unknown setting 'pred_iou'"),
    ({}, {"grid": 8}, "unknown setting 'grid'"),
    ({"points_per_side": 16.0}, {}, "points_per_side must be of type int, got 16.0"),
    ({}, {"points_per_side": True}, "points_per_side must be of type int"),
    ({}, {"pred_iou_thresh": "0.5"}, "pred_iou_thresh must be of type float"),
    ({}, {"compile": 1}, "compile must be of type bool"),
    ({"points_per_side": 0}, {}, r"the checkpoint's everything-mode settings: points_per_side "
                                 r"must be within 1\.\.256, got 0"),
    ({}, {"box_nms_thresh": 7.0}, r"box_nms_thresh must be within 0\.0\.\.1\.0, got 7\.0"),
    ({}, {"stream_stride": -3}, r"stream_stride must be within 1\.\.16"),
])
def test_bad_settings_name_their_source(tiny_model: Saom, carried: dict, explicit: dict,
                                        message: str) -> None:
    tiny_model.everything = carried
    with pytest.raises(ValueError, match=message):
        settings_for(tiny_model, **explicit)


def test_settings_made_in_code_are_checked_too() -> None:
    """Built directly or by dataclasses.replace (as the node and the benchmarks do)."""
    with pytest.raises(ValueError, match=r"points_per_side must be within 1\.\.256, got 0"):
        dataclasses.replace(EverythingSettings(), points_per_side=0)
    with pytest.raises(ValueError, match="points_per_batch must be within"):
        EverythingSettings(points_per_batch=-1)
    with pytest.raises(ValueError, match="pred_iou_thresh must be within"):
        EverythingSettings(pred_iou_thresh=float("nan"))
    with pytest.raises(ValueError, match="points_per_side must be of type int, got 16.0"):
        EverythingSettings(points_per_side=16.0)
    # numpy's numbers are numbers; an integer is a valid float
    s = EverythingSettings(points_per_side=np.int64(8), pred_iou_thresh=np.float32(0.5),
                           box_nms_thresh=1)
    assert (type(s.points_per_side), type(s.pred_iou_thresh), type(s.box_nms_thresh)) == \
        (int, float, float)


def test_the_range_ends_are_accepted(tiny_model: Saom) -> None:
    tiny_model.everything = {}
    for name, (low, high) in RANGES.items():
        assert getattr(settings_for(tiny_model, **{name: low}), name) == low
        assert getattr(settings_for(tiny_model, **{name: high}), name) == high


def test_checkpoints_carry_no_runtime_fields() -> None:
    carried = carried_settings(EverythingSettings(points_per_side=8, compile=True))
    assert carried["points_per_side"] == 8
    assert not RUNTIME_FIELDS & set(carried)
    assert set(carried) | RUNTIME_FIELDS == {f.name for f in dataclasses.fields(EverythingSettings)}


def test_shipped_checkpoint_carries_the_demo_settings() -> None:
    demo = yaml.safe_load((ROOT / "config" / "experiment.yaml").read_text())["demo"]
    model = load_model(SHIPPED)
    assert {k: model.everything[k] for k in demo} == demo
    assert {k: getattr(settings_for(model), k) for k in demo} == demo
    # The rest at today's defaults: what exporting with the demo settings writes now.
    assert model.everything == carried_settings(EverythingSettings(**demo))


@pytest.mark.slow
def test_shipped_checkpoint_finds_objects_with_its_own_settings() -> None:
    model = load_model(SHIPPED)
    settings = settings_for(model)
    frames = sorted((SHIPPED.parent / "demo_frames").glob("*.png"))
    assert frames
    found, with_defaults = [], []
    for frame in frames:
        image = cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB)
        found.append(len(EverythingEngine(model, settings)(image)))
        with_defaults.append(len(EverythingEngine(model, EverythingSettings())(image)))
    assert min(found) >= 1, found
    # The generator's defaults (meant for official SAM) keep little or nothing of this model.
    assert sum(found) > sum(with_defaults), (found, with_defaults)
