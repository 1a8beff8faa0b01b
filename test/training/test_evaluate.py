"""Evaluation: matching, per-class sums, COCO AP on known answers; side-by-side reports."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from saom_ros.everything import EverythingSettings
from saom_ros.model import ModelConfig, build_saom, load_model, save_checkpoint
from saom_ros.training import evaluate
from saom_ros.training.config import load_config
from saom_ros.training.evaluate import (
    ClassStats, coco_mask_ap, match_greedy, score_matches, summarize)
from saom_ros.training.datasets import open_dataset
from test_finetune import CLASSES, make_dataset


def test_greedy_matching_takes_the_best_pairs_first():
    iou = np.array([[0.6, 0.7, 0.0],
                    [0.0, 0.8, 0.1],
                    [0.0, 0.0, 0.0]])
    # (1,1) 0.8 first, then (0,0) 0.6 (prediction 1 is taken); GT 2 overlaps nothing
    assert match_greedy(iou, 0.0).tolist() == [0, 1, -1]
    assert match_greedy(iou, 0.65).tolist() == [-1, 1, -1]
    assert match_greedy(np.zeros((2, 0)), 0.0).tolist() == [-1, -1]


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_per_class_sums_with_misses_as_empty_masks():
    gt = np.stack([_box(20, 20, 0, 10, 0, 10), _box(20, 20, 10, 20, 10, 20),
                   _box(20, 20, 0, 5, 15, 20)])  # areas 100, 100, 25
    pred = np.stack([_box(20, 20, 0, 10, 0, 5),   # half of GT 0 (inter 50, union 100)
                     _box(20, 20, 10, 20, 10, 20)])  # exactly GT 1
    stats: dict[str, ClassStats] = {}
    score_matches(stats, gt, ["Mug", "Mug", "Vase"], pred, ["Mug", "Vase"],
                  np.array([0, 1, -1]))
    out = summarize(stats, class_aware=True)
    assert out["per_class"]["Mug"]["iou"] == pytest.approx(150 / 200)
    assert out["per_class"]["Mug"]["acc"] == pytest.approx(150 / 200)
    assert out["per_class"]["Vase"] == {"iou": 0.0, "acc": 0.0, "instances": 1}
    assert out["miou"] == pytest.approx((0.75 + 0.0) / 2)
    assert out["class_accuracy"] == pytest.approx(1 / 2)  # GT 1 was called a Vase


def test_coco_ap_known_answers():
    gt_mask = _box(30, 30, 5, 20, 5, 25)
    rle = evaluate._rle(gt_mask)
    images = [{"id": 1, "height": 30, "width": 30}]
    gts = [{"id": 1, "image_id": 1, "segmentation": rle, "area": float(gt_mask.sum()),
            "bbox": [5, 5, 20, 15], "iscrowd": 0, "category_id": 1}]
    cats = [{"id": 1, "name": "object"}]
    perfect = coco_mask_ap(images, gts, [{"image_id": 1, "segmentation": rle, "category_id": 1,
                                          "score": 0.9}], cats)
    assert perfect == {"ap": pytest.approx(1.0), "ap50": pytest.approx(1.0),
                       "ap75": pytest.approx(1.0)}
    assert coco_mask_ap(images, gts, [], cats)["ap"] == 0.0
    half = evaluate._rle(_box(30, 30, 5, 20, 5, 15))  # IoU 0.5: counts at 0.5 only
    out = coco_mask_ap(images, gts, [{"image_id": 1, "segmentation": half, "category_id": 1,
                                      "score": 0.9}], cats)
    assert out["ap50"] == pytest.approx(1.0) and out["ap75"] == 0.0


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """An official-format (class-agnostic) tiny SAM file and a tiny SAOM checkpoint."""
    tmp = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    sam = tmp / "sam_tiny.pth"
    torch.save(build_saom(ModelConfig.preset("tiny")).sam.state_dict(), sam)
    saom = tmp / "saom_tiny.pt"
    save_checkpoint(saom, build_saom(ModelConfig.preset("tiny", len(CLASSES)), CLASSES))
    return sam, saom


def test_side_by_side_report(two_checkpoints, tmp_path):
    data = open_dataset(make_dataset(tmp_path / "d", n=2))
    cfg = load_config(None, ["evaluate.points_per_side=8",
                             "evaluate.everything.pred_iou_thresh=0",
                             "evaluate.everything.stability_score_thresh=0"])
    results = evaluate.evaluate_checkpoints(two_checkpoints, ["SAM", "SAOM"], data, cfg,
                                            tmp_path / "out", progress=False)
    assert json.loads((tmp_path / "out/results.json").read_text()) == results
    sam, saom = results["models"]["SAM"], results["models"]["SAOM"]
    assert not sam["class_aware"] and saom["class_aware"]
    n_gt = sum(len(data[i].masks) for i in range(len(data)))
    for m in (sam, saom):
        for protocol in ("prompted", "everything"):
            r = m[protocol]
            assert 0.0 <= r["miou"] <= r["macc"] <= 1.0  # union >= GT area
            assert sum(c["instances"] for c in r["per_class"].values()) == n_gt
        assert 0.0 <= m["everything"]["coco_agnostic"]["ap"] <= 1.0
        assert m["everything"]["predictions_per_image"] > 0
    assert sam["prompted"]["class_accuracy"] is None and sam["everything"]["coco"] is None
    assert 0.0 <= saom["prompted"]["class_accuracy"] <= 1.0
    table = (tmp_path / "out/results.md").read_text()
    assert "| SAM IoU | SAM Acc | SAOM IoU | SAOM Acc |" in table
    assert f"| SAM | {100 * sam['prompted']['miou']:.1f} |" in table


def test_bad_arguments(two_checkpoints, tmp_path):
    data = open_dataset(make_dataset(tmp_path / "d", n=1))
    cfg = load_config()
    with pytest.raises(ValueError, match="2 checkpoints but 1 names"):
        evaluate.evaluate_checkpoints(two_checkpoints, ["SAM"], data, cfg, tmp_path)
    bad = load_config(None, ["evaluate.everything.pred_iou=0.5"])
    with pytest.raises(ValueError, match="evaluate.everything"):
        evaluate.evaluate_checkpoints(two_checkpoints[:1], ["SAM"], data, bad, tmp_path)
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate.evaluate_checkpoints(two_checkpoints[:1], ["SAM"], data, cfg, tmp_path,
                                      protocols=["panoptic"])


def test_each_checkpoint_runs_with_its_own_settings_unless_set(two_checkpoints, tmp_path):
    data = open_dataset(make_dataset(tmp_path / "d", n=1))
    sam, saom = two_checkpoints
    carrying = tmp_path / "carrying.pt"
    save_checkpoint(carrying, load_model(saom), everything={
        "points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})

    def settings(*overrides: str) -> dict:
        results = evaluate.evaluate_checkpoints(
            [sam, carrying], ["SAM", "SAOM"], data, load_config(None, overrides),
            tmp_path / "out", protocols=["everything"], progress=False)
        return {n: m["everything_settings"] for n, m in results["models"].items()}

    own = settings()
    # An official SAM file: the generator's defaults (and config/train.yaml's batch size).
    assert own["SAM"] == dataclasses.asdict(EverythingSettings(points_per_batch=64))
    assert (own["SAOM"]["points_per_side"], own["SAOM"]["pred_iou_thresh"]) == (4, 0.0)
    report = (tmp_path / "out/results.md").read_text()
    assert "- SAM: points_per_side 32, pred_iou_thresh 0.88" in report
    assert "- SAOM: points_per_side 4, pred_iou_thresh 0.0" in report
    explicit = settings("evaluate.points_per_side=2", "evaluate.everything.pred_iou_thresh=0.5")
    for name in ("SAM", "SAOM"):
        assert (explicit[name]["points_per_side"], explicit[name]["pred_iou_thresh"]) == (2, 0.5)
    assert explicit["SAOM"]["stability_score_thresh"] == 0.0  # not set: still the checkpoint's
