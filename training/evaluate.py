"""Evaluation (`saom-train evaluate`) of any checkpoints, side by side, under two protocols.

(a) ``prompted`` - the paper's protocol: every ground-truth object is prompted with its assigned
    grid point (the training assignment); the output with the highest predicted IoU is its mask.
(b) ``everything`` - the engine runs as the node does; predictions are matched to ground truth
    greedily by IoU (highest IoU pair first, each side used once, a pair matches when its IoU is
    above ``match_iou``). Unmatched ground truth counts as an empty mask; unmatched predictions
    do not enter IoU/Acc (they lower COCO AP, which is reported too).
Per class c (the ground truth's class): IoU_c = sum of intersections / sum of unions,
Acc_c = sum of intersections / sum of ground-truth areas, over all instances of c; mIoU and mAcc
are means over the classes present. ``class_accuracy`` is the share of prompted / matched
instances whose predicted class is the ground truth's (None for class-agnostic models).
COCO mask AP (pycocotools) is reported class-agnostic for every model, and per class for models
with a class head.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from saom_ros.atomic import atomic_write_text
from saom_ros.everything import EverythingEngine
from saom_ros.everything_settings import RUNTIME_FIELDS, EverythingSettings, settings_for
from saom_ros.model import Saom, load_model
from saom_ros.training.assignment import assign_nearest, to_model_frame


@dataclasses.dataclass
class ClassStats:
    """Sums over the instances of one class."""

    intersection: float = 0.0
    union: float = 0.0
    gt_area: float = 0.0
    instances: int = 0
    classified: int = 0  # instances that got a class (prompted or matched)
    correct: int = 0

    def add(self, inter: float, union: float, gt_area: float) -> None:
        self.intersection += inter
        self.union += union
        self.gt_area += gt_area
        self.instances += 1


def summarize(stats: dict[str, ClassStats], class_aware: bool) -> dict:
    per_class = {name: {"iou": s.intersection / max(s.union, 1.0),
                        "acc": s.intersection / max(s.gt_area, 1.0), "instances": s.instances}
                 for name, s in sorted(stats.items()) if s.instances > 0}
    classified = sum(s.classified for s in stats.values())
    return {
        "miou": float(np.mean([c["iou"] for c in per_class.values()])) if per_class else 0.0,
        "macc": float(np.mean([c["acc"] for c in per_class.values()])) if per_class else 0.0,
        "class_accuracy": (sum(s.correct for s in stats.values()) / classified
                           if class_aware and classified else None),
        "per_class": per_class,
    }


def _pred_names(model: Saom, class_logits: Optional[torch.Tensor]) -> Optional[list[str]]:
    if class_logits is None:
        return None
    return [model.class_names[i] for i in class_logits.argmax(-1).tolist()]


@torch.inference_mode()
def evaluate_prompted(model: Saom, dataset, points_per_side: int, min_coverage: float = 0.5,
                      max_images: Optional[int] = None, progress: bool = False) -> dict:
    """Protocol (a); masks the assignment drops (they vanish on the embedding grid) are misses."""
    stats: dict[str, ClassStats] = {}
    size = model.config.img_size
    class_aware = model.class_head is not None
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    for i in tqdm(range(n), desc="prompted", disable=not progress):
        sample = dataset[i]
        hw = sample.image.shape[:2]
        x, input_hw = model.preprocess(sample.image)
        emb = model.embed(x)
        masks = torch.as_tensor(sample.masks, device=model.device)
        a = assign_nearest(emb[0], masks, size, points_per_side, min_coverage)
        pred = torch.zeros_like(masks)
        names = None
        if len(a.keep):
            coords = torch.as_tensor(to_model_frame(a.points, hw, size), dtype=torch.float32,
                                     device=model.device)[:, None]
            labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=model.device)
            out = model.decode(emb, coords, labels, multimask=True)
            best = out.iou_pred.argmax(1)
            logits = out.low_res_logits[torch.arange(len(best)), best][:, None]
            full = model.sam.postprocess_masks(logits, input_hw, hw)[:, 0]
            pred[torch.as_tensor(a.keep, device=model.device)] = full > 0
            names = _pred_names(model, out.class_logits)
        keep_pos = {int(k): j for j, k in enumerate(a.keep)}
        for k in range(len(masks)):
            gt_name = dataset.class_names[int(sample.class_ids[k]) - 1]
            s = stats.setdefault(gt_name, ClassStats())
            g, p = masks[k], pred[k]
            s.add(float((g & p).sum()), float((g | p).sum()), float(g.sum()))
            if names is not None and k in keep_pos:
                s.classified += 1
                s.correct += names[keep_pos[k]] == gt_name
    return summarize(stats, class_aware)


def match_greedy(iou: np.ndarray, match_iou: float) -> np.ndarray:
    """For iou [G, P]: the prediction matched to each ground truth, or -1.

    Pairs are taken in order of decreasing IoU; each ground truth and prediction is used once.
    """
    match = np.full(iou.shape[0], -1, np.int64)
    if iou.size == 0:
        return match
    used = np.zeros(iou.shape[1], bool)
    order = np.argsort(-iou, axis=None, kind="stable")
    for g, p in zip(*np.unravel_index(order, iou.shape)):
        if iou[g, p] <= match_iou:
            break
        if match[g] < 0 and not used[p]:
            match[g], used[p] = p, True
    return match


def score_matches(stats: dict[str, ClassStats], gt_masks: np.ndarray, gt_names: Sequence[str],
                  pred_masks: np.ndarray, pred_names: Optional[Sequence[str]],
                  match: np.ndarray) -> None:
    """Add one image's matched pairs to ``stats``; an unmatched ground truth is an empty mask."""
    for k, g in enumerate(gt_masks):
        s = stats.setdefault(gt_names[k], ClassStats())
        if match[k] < 0:
            s.add(0.0, float(g.sum()), float(g.sum()))
            continue
        p = pred_masks[match[k]]
        s.add(float((g & p).sum()), float((g | p).sum()), float(g.sum()))
        if pred_names is not None:
            s.classified += 1
            s.correct += pred_names[match[k]] == gt_names[k]


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def coco_mask_ap(images: list[dict], gts: list[dict], dts: list[dict],
                 categories: list[dict]) -> dict:
    """COCO mask AP, AP50, AP75 (pycocotools) of detections against ground truth."""
    if not dts:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gts, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dts)
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 means "no ground truth in this bucket"
    return {k: max(0.0, float(v)) for k, v in zip(("ap", "ap50", "ap75"), ev.stats[:3])}


@torch.inference_mode()
def evaluate_everything(model: Saom, dataset, settings: EverythingSettings,
                        match_iou: float = 0.0, max_images: Optional[int] = None,
                        progress: bool = False) -> dict:
    """Protocol (b): everything mode, greedy IoU matching, per-class IoU/Acc and COCO mask AP."""
    engine = EverythingEngine(model, settings, model.device)
    class_aware = model.class_head is not None
    stats: dict[str, ClassStats] = {}
    images, gts, dts_agnostic, dts_classes = [], [], [], []
    n_pred = 0
    name_to_id = {name: i + 1 for i, name in enumerate(dataset.class_names)}
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    for i in tqdm(range(n), desc="everything", disable=not progress):
        sample = dataset[i]
        h, w = sample.image.shape[:2]
        images.append({"id": i + 1, "height": h, "width": w})
        inst = engine(sample.image)
        n_pred += len(inst)
        gt_rles = [_rle(m) for m in sample.masks]
        dt_rles = [_rle(m) for m in inst.masks]
        for k, rle in enumerate(gt_rles):
            gts.append({"id": len(gts) + 1, "image_id": i + 1, "segmentation": rle,
                        "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle)),
                        "iscrowd": 0, "category_id": int(sample.class_ids[k])})
        pred_names = ([model.class_names[c - 1] for c in inst.class_ids.tolist()]
                      if class_aware else None)
        for j, rle in enumerate(dt_rles):
            dts_agnostic.append({"image_id": i + 1, "segmentation": rle, "category_id": 1,
                                 "score": float(inst.predicted_iou[j])})
            if class_aware and pred_names[j] in name_to_id:
                dts_classes.append({"image_id": i + 1, "segmentation": rle,
                                    "category_id": name_to_id[pred_names[j]],
                                    "score": float(inst.class_scores[j])})
        iou = (np.asarray(mask_utils.iou(gt_rles, dt_rles, [0] * len(dt_rles)))
               .reshape(len(gt_rles), len(dt_rles)) if gt_rles and dt_rles
               else np.zeros((len(gt_rles), len(dt_rles))))
        gt_names = [dataset.class_names[int(c) - 1] for c in sample.class_ids]
        score_matches(stats, sample.masks, gt_names, inst.masks, pred_names,
                      match_greedy(iou, match_iou))
    result = summarize(stats, class_aware)
    agnostic_gts = [{**g, "category_id": 1} for g in gts]
    result["coco_agnostic"] = coco_mask_ap(images, agnostic_gts, dts_agnostic,
                                           [{"id": 1, "name": "object"}])
    result["coco"] = (coco_mask_ap(images, gts, dts_classes,
                                   [{"id": i + 1, "name": nm}
                                    for i, nm in enumerate(dataset.class_names)])
                      if class_aware else None)
    result["predictions_per_image"] = n_pred / max(n, 1)
    result["match_iou"] = match_iou
    return result


def evaluate_checkpoints(checkpoints: Sequence[str | os.PathLike], names: Sequence[str], dataset,
                         cfg: dict, out_dir: str | os.PathLike, device: str = "cpu",
                         model_type: Optional[str] = None,
                         protocols: Sequence[str] = ("prompted", "everything"),
                         progress: bool = True) -> dict:
    """Evaluate every checkpoint; write results.json and results.md to ``out_dir``.

    Each checkpoint runs with its own everything-mode settings (``settings_for``) under the
    values ``cfg['evaluate']`` sets (``points_per_side`` and ``everything``; null: not set).
    The grid is used by both protocols.
    """
    if len(checkpoints) != len(names):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(names)} names")
    unknown = set(protocols) - {"prompted", "everything"}
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(sorted(unknown))}; "
                         "known: prompted, everything")
    ec = cfg["evaluate"]
    explicit = {"points_per_side": ec["points_per_side"], **ec["everything"]}
    results = {"dataset_images": (len(dataset) if ec["max_images"] is None
                                  else min(len(dataset), int(ec["max_images"]))),
               "settings": {"match_iou": float(ec["match_iou"]), "explicit": explicit},
               "models": {}}
    for path, name in zip(checkpoints, names):
        model = load_model(path, model_type=model_type, device=device)
        try:
            settings = settings_for(model, **explicit)
        except ValueError as err:
            raise ValueError(f"evaluate.everything / {path}: {err}") from None
        entry = {"checkpoint": str(path), "class_aware": model.class_head is not None,
                 "everything_settings": dataclasses.asdict(settings)}
        if "prompted" in protocols:
            entry["prompted"] = evaluate_prompted(
                model, dataset, settings.points_per_side,
                float(cfg["assignment"]["min_coverage"]), ec["max_images"], progress)
        if "everything" in protocols:
            entry["everything"] = evaluate_everything(
                model, dataset, settings, float(ec["match_iou"]), ec["max_images"], progress)
        results["models"][name] = entry
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out_dir / "results.md", markdown_report(results))
    return results


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_report(results: dict) -> str:
    """Summary table plus one per-class IoU/Acc table per protocol, models side by side."""
    models = results["models"]
    lines = ["# Evaluation", "",
             f"{results['dataset_images']} images; everything-mode match IoU > "
             f"{results['settings']['match_iou']}. Numbers in %. Everything-mode settings (each "
             "checkpoint's own under the explicit options; the grid is also the prompted "
             "protocol's):", ""]
    lines += [f"- {name}: " + ", ".join(f"{k} {v}" for k, v in m["everything_settings"].items()
                                        if k not in RUNTIME_FIELDS)
              for name, m in models.items()]
    lines += ["",
             "| model | prompted mIoU | prompted mAcc | prompted class acc | everything mIoU "
             "| everything mAcc | everything class acc | mask AP (class-agnostic) | mask AP50 "
             "(class-agnostic) | mask AP (per class) | predictions / image |",
             "|---" * 11 + "|"]
    for name, m in models.items():
        p, e = m.get("prompted", {}), m.get("everything", {})
        coco = e.get("coco") or {}
        agn = e.get("coco_agnostic") or {}
        ppi = e.get("predictions_per_image")
        lines.append(
            f"| {name} | {_pct(p.get('miou'))} | {_pct(p.get('macc'))} | "
            f"{_pct(p.get('class_accuracy'))} | {_pct(e.get('miou'))} | {_pct(e.get('macc'))} | "
            f"{_pct(e.get('class_accuracy'))} | {_pct(agn.get('ap'))} | {_pct(agn.get('ap50'))} | "
            f"{_pct(coco.get('ap'))} | {'-' if ppi is None else f'{ppi:.1f}'} |")
    for protocol, title in (("prompted", "Prompted with the assigned grid point (paper protocol)"),
                            ("everything", "Everything mode")):
        present = [n for n, m in models.items() if protocol in m]
        if not present:
            continue
        classes = sorted({c for n in present for c in models[n][protocol]["per_class"]})
        lines += ["", f"## {title}", "",
                  "| class | instances | " + " | ".join(f"{n} IoU | {n} Acc" for n in present)
                  + " |", "|---|---|" + "---|---|" * len(present)]
        for c in classes:
            cells = []
            for n in present:
                pc = models[n][protocol]["per_class"].get(c)
                cells += [_pct(pc and pc["iou"]), _pct(pc and pc["acc"])]
            count = models[present[0]][protocol]["per_class"].get(c, {}).get("instances", 0)
            lines.append(f"| {c} | {count} | " + " | ".join(cells) + " |")
        means = []
        for n in present:
            means += [f"**{_pct(models[n][protocol]['miou'])}**",
                      f"**{_pct(models[n][protocol]['macc'])}**"]
        lines.append("| **mean** | | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"
