"""Evaluation: matching, per-class sums, COCO AP on known answers; side-by-side reports."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from saom_ros.everything import EverythingSettings
from saom_ros.model import ModelConfig, build_saom, load_model, save_checkpoint
from saom_ros.training.assignment import assign_nearest
from saom_ros.training import evaluate
from saom_ros.training.config import load_config
from saom_ros.training.coco_masks import mask_to_annotation
from saom_ros.training.evaluate import (
    ClassStats, coco_mask_ap, gt_annotations, match_greedy, score_matches, summarize)
from saom_ros.training.datasets import CocoInstances, open_dataset, write_coco, write_image
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


def test_undefined_results_are_none_not_zero():
    empty = summarize({}, class_aware=True)
    assert (empty["miou"], empty["macc"], empty["class_accuracy"]) == (None, None, None)
    images = [{"id": 1, "height": 30, "width": 30}]
    cats = [{"id": 1, "name": "object"}]
    det = {"image_id": 1, "segmentation": evaluate._rle(_box(30, 30, 0, 9, 0, 9)),
           "category_id": 1, "score": 0.9}
    none = {"ap": None, "ap50": None, "ap75": None}
    assert coco_mask_ap(images, [], [det], cats) == none  # pycocotools says -1: no ground truth
    assert coco_mask_ap(images, [], [], cats) == none
    report = evaluate.markdown_report({
        "dataset_images": 0, "settings": {"match_iou": 0.0},
        "models": {"m": {"everything_settings": {}, "prompted": empty,
                         "everything": {**empty, "coco_agnostic": none, "coco": None,
                                        "predictions_per_image": None}}}})
    assert "| m | - | - | - | - | - | - | - | - | - | - |" in report


def _crowd_case(root) -> tuple[CocoInstances, list[dict]]:
    """A hand-checked case, as a COCO file: image 1 holds A (class 1), B (class 2) and a crowd
    region (class 2), image 2 nothing; detections on the crowd (0.95), exactly A (0.9), half of
    B (0.8, IoU 0.5) and on image 2 (0.5)."""
    h = w = 40
    a, b, crowd = _box(h, w, 5, 15, 5, 15), _box(h, w, 20, 30, 5, 15), _box(h, w, 5, 35, 25, 35)
    anns = [mask_to_annotation(a, 1, 1, 1), mask_to_annotation(b, 2, 1, 2),
            mask_to_annotation(crowd, 3, 1, 2, iscrowd=1)]
    # COCO's own crowd regions are uncompressed RLE
    anns[2]["segmentation"] = {"size": [h, w], "counts": _uncompressed_counts(crowd)}
    images = []
    for i in (1, 2):
        write_image(root / f"{i}.png", np.zeros((h, w, 3), np.uint8))
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
    write_coco(root / "ann.json", images, anns,
               [{"id": 1, "name": "Mug"}, {"id": 2, "name": "Vase"}])
    dts = [(1, _box(h, w, 10, 20, 27, 33), 2, 0.95), (1, a, 1, 0.9),
           (1, _box(h, w, 20, 30, 5, 10), 2, 0.8), (2, _box(h, w, 0, 10, 0, 10), 1, 0.5)]
    return CocoInstances(root / "ann.json"), [
        {"image_id": i, "segmentation": evaluate._rle(m), "category_id": c, "score": s}
        for i, m, c, s in dts]


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flat, [1 - flat[-1]]))))
    return np.diff(np.concatenate(([0], edges))).tolist()


def _pycocotools_on_file(path, dts: list[dict], use_cats: bool) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dts]), "segm")
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:3]]


def test_coco_ap_ignores_detections_on_crowd_regions_as_pycocotools_does(tmp_path):
    data, dts = _crowd_case(tmp_path)
    images = [{"id": s.image_id, "height": 40, "width": 40} for s in data]
    gts = [g for s in data for g in gt_annotations(s, s.image_id, 1 + 10 * s.image_id)]
    assert [g["iscrowd"] for g in gts] == [0, 0, 1]
    agnostic = coco_mask_ap(images, [{**g, "category_id": 1} for g in gts],
                            [{**d, "category_id": 1} for d in dts], [{"id": 1, "name": "object"}])
    per_class = coco_mask_ap(images, gts, dts, [{"id": 1, "name": "Mug"},
                                                {"id": 2, "name": "Vase"}])
    expected = _pycocotools_on_file(tmp_path / "ann.json", dts, use_cats=False)
    assert [agnostic[k] for k in ("ap", "ap50", "ap75")] == pytest.approx(expected)
    # by hand: AP50 1 (the crowd detection ignored); above 0.5 A alone, 51 of 101 recall points
    assert expected == pytest.approx([(1 + 9 * 51 / 101) / 10, 1.0, 51 / 101])
    assert per_class["ap"] == pytest.approx(_pycocotools_on_file(tmp_path / "ann.json", dts,
                                                                 use_cats=True)[0])
    assert per_class["ap"] == pytest.approx((1.0 + 0.1) / 2)  # Mug 1, Vase: AP50 only


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


def test_prompted_protocols_name_their_assignment_and_use_it(two_checkpoints, tmp_path,
                                                             monkeypatch):
    data = open_dataset(make_dataset(tmp_path / "d", n=1))
    calls = []

    def recording(*args, **kwargs):
        calls.append(kwargs["on_object"])
        return assign_nearest(*args, **kwargs)

    monkeypatch.setattr(evaluate, "assign_nearest", recording)
    results = evaluate.evaluate_checkpoints(
        two_checkpoints[1:], ["SAOM"], data, load_config(None, ["evaluate.points_per_side=8"]),
        tmp_path / "out", protocols=["prompted", "prompted-reference"], progress=False)
    saom = results["models"]["SAOM"]
    assert calls == [True, False]  # one image each: on-object first, then the reference's
    assert (saom["prompted"]["assignment"], saom["prompted-reference"]["assignment"]) == \
        ("on-object", "reference")
    report = (tmp_path / "out/results.md").read_text()
    assert "| model | prompted on-object mIoU |" in report and "prompted reference mIoU" in report
    assert "## Prompted with the assigned grid point, reference assignment" in report


@pytest.mark.parametrize("protocol", ["prompted", "prompted-reference"])
def test_prompted_masks_are_binarised_at_the_settings_mask_threshold(two_checkpoints, tmp_path,
                                                                     protocol):
    data = open_dataset(make_dataset(tmp_path / "d", n=2))

    def miou(threshold: float) -> float:
        cfg = load_config(None, ["evaluate.points_per_side=8",
                                 f"evaluate.everything.mask_threshold={threshold}"])
        results = evaluate.evaluate_checkpoints(two_checkpoints[1:], ["SAOM"], data, cfg,
                                                tmp_path / "out", protocols=[protocol],
                                                progress=False)
        return results["models"]["SAOM"][protocol]["miou"]

    assert miou(0.0) > 0.0  # the untrained model's masks overlap the objects somewhat
    assert miou(1e9) == 0.0  # no logit is that high: every mask is empty


def test_crowd_regions_stay_out_of_matching_and_iou(two_checkpoints, tmp_path):
    data, _ = _crowd_case(tmp_path)
    settings = EverythingSettings(points_per_side=4, pred_iou_thresh=0.0,
                                  stability_score_thresh=0.0)
    out = evaluate.evaluate_everything(load_model(two_checkpoints[1]), data, settings)
    assert {c: v["instances"] for c, v in out["per_class"].items()} == {"Mug": 1, "Vase": 1}


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
    with pytest.raises(ValueError, match="no protocol to run; known: prompted, "):
        evaluate.evaluate_checkpoints(two_checkpoints[:1], ["SAM"], data, cfg, tmp_path,
                                      protocols=[])
    # one name for two models would keep only the last one's results
    sam, saom = two_checkpoints
    with pytest.raises(ValueError, match=f"'A' names {sam}, {saom}; give them distinct names "
                                         "with --names"):
        evaluate.evaluate_checkpoints(two_checkpoints, ["A", "A"], data, cfg, tmp_path)
    with pytest.raises(ValueError, match="unknown assignment 'image'"):
        evaluate.evaluate_prompted(load_model(two_checkpoints[1]), data, 8, assignment="image")


def test_a_bad_later_checkpoint_fails_before_any_evaluation(two_checkpoints, tmp_path,
                                                            monkeypatch):
    data = open_dataset(make_dataset(tmp_path / "d", n=1))
    evaluated = []
    monkeypatch.setattr(evaluate, "evaluate_prompted", lambda *a, **k: evaluated.append(a))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    newer = tmp_path / "newer.pt"  # carries a setting this version does not know
    save_checkpoint(newer, load_model(two_checkpoints[1]), everything={"tile_overlap": 0.2})
    for bad, message in ((tmp_path / "missing.pt", "does not exist"),
                         (junk, "is not a checkpoint"),
                         (newer, f"{newer}: .*unknown setting 'tile_overlap'")):
        with pytest.raises(ValueError, match=message):
            evaluate.evaluate_checkpoints([two_checkpoints[0], bad], ["SAM", "bad"], data,
                                          load_config(), tmp_path / "out",
                                          protocols=["prompted"], progress=False)
    assert evaluated == [] and not (tmp_path / "out").exists()


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
