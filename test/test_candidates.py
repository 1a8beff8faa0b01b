"""Candidate decoding on its own: the edge cases the prompt strategies reach."""
import numpy as np
import pytest
import torch

from saom_ros.candidates import Frame, _queued, decode_candidates
from saom_ros.everything import EverythingSettings
from saom_ros.model import Saom


def _frame(model: Saom, image: np.ndarray) -> Frame:
    x, input_hw = model.preprocess(image)
    with torch.inference_mode():
        embedding = model.embed(x)
    cfg = model.config
    return Frame(embedding, image.shape[:2], input_hw, cfg.img_size, cfg.patch_size)


def test_no_points_give_no_candidates(tiny_model: Saom) -> None:
    """Hierarchical prompts leave no point when confident masks cover the whole grid."""
    frame = _frame(tiny_model, np.full((48, 64, 3), 90, np.uint8))
    settings = EverythingSettings(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    with torch.inference_mode():
        empty = decode_candidates(tiny_model, frame, np.zeros((0, 2)), settings,
                                  lambda name: getattr(tiny_model, name))
        one = decode_candidates(tiny_model, frame, np.array([[10.0, 20.0]]), settings,
                                lambda name: getattr(tiny_model, name))
    assert len(empty) == 0 and len(one) > 0
    assert empty.logits.shape[1:] == one.logits.shape[1:]
    assert empty.cls.shape[1:] == one.cls.shape[1:]
    assert empty.point.shape == (0, 2)


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_queued_items_come_in_order_with_the_next_ones_made(ahead) -> None:
    made = []

    def items():
        for i in range(5):
            made.append(i)
            yield i
    for i in _queued(items(), ahead):
        assert made == list(range(min(5, i + 1 + ahead)))
