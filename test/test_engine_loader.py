"""engine_loader: the node's model and engine from its parameters, without ROS."""
from __future__ import annotations

import pytest
import torch

from saom_ros.engine_loader import StartupError, load_engine, resolve_device
from saom_ros.everything import EverythingSettings
from saom_ros.model import ModelConfig, build_saom, save_checkpoint


def test_explicit_settings_win_over_the_checkpoints_which_win_over_the_defaults(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "carrying.pt"
    save_checkpoint(path, build_saom(ModelConfig.preset("tiny")).eval(),
                    everything={"pred_iou_thresh": 0.3, "box_nms_thresh": 0.3})
    loaded = load_engine(str(path), device="cpu", explicit={"box_nms_thresh": 0.6})
    settings = loaded.engine.settings
    assert (settings.pred_iou_thresh, settings.box_nms_thresh) == (0.3, 0.6)
    assert settings.stability_score_thresh == EverythingSettings().stability_score_thresh
    assert loaded.class_names == ("object",) and loaded.device == torch.device("cpu")


def test_the_packaged_model_is_the_default_and_carries_its_settings():
    loaded = load_engine("", device="cpu")
    assert loaded.engine.settings != EverythingSettings()  # the demo settings it was shipped with
    assert len(loaded.class_names) == 10


def test_problems_are_startup_errors_that_say_what_is_wrong(tmp_path):
    with pytest.raises(StartupError, match="no_such.pt"):
        load_engine(str(tmp_path / "no_such.pt"), device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(StartupError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    for other in ("tpu", "meta", "cpu:x"):  # torch's own types and errors are not ours
        with pytest.raises(StartupError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(other)
