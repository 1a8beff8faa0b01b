"""Evaluation (`saom-train evaluate`) of any checkpoints, side by side, under these protocols.

(a) ``prompted`` and ``prompted-reference`` - the reference code's kind of protocol: every
    ground-truth object is prompted with one grid point assigned from the image features; the
    output with the highest predicted IoU, binarised at ``mask_threshold``, is its mask.
    ``prompted`` assigns as training does (``on-object``: the arg-max over the mask's own cells,
    snapped to a grid point lying on the mask), which favours the model: the prompt always lies
    on its object. ``prompted-reference`` assigns as the reference code does (``reference``: the
    arg-max over the whole image, snapped to the nearest grid point overall).
(b) ``everything`` - the engine runs as the node does; predictions are matched to ground truth
    greedily by IoU (highest IoU pair first, each side used once, a pair matches when its IoU is
    above ``match_iou``). Unmatched ground truth counts as an empty mask; unmatched predictions
    do not enter IoU/Acc (they lower COCO AP, which is reported too).
Per class c (the ground truth's class): IoU_c = sum of intersections / sum of unions,
Acc_c = sum of intersections / sum of ground-truth areas, over all instances of c; mIoU and mAcc
are means over the classes present. ``class_accuracy`` is the share of prompted / matched
instances whose predicted class is the ground truth's (None for class-agnostic models).
COCO mask AP (pycocotools) is reported class-agnostic for every model, and per class for models
with a class head; crowd regions are ground truth there with iscrowd 1 (detections on them are
ignored), and nowhere else. A result without data (no class present, no ground truth for AP) is
None, not 0.
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
from saom_ros.training.datasets import Sample

# prompted protocol -> its assignment (the name results carry)
PROMPTED = {"prompted": "on-object", "prompted-reference": "reference"}
PROTOCOLS = (*PROMPTED, "everything")


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
    """mIoU, mAcc (None when no class is present), class accuracy and per-class numbers."""
    per_class = {name: {"iou": s.intersection / max(s.union, 1.0),
                        "acc": s.intersection / max(s.gt_area, 1.0), "instances": s.instances}
                 for name, s in sorted(stats.items()) if s.instances > 0}
    classified = sum(s.classified for s in stats.values())
    return {
        "miou": float(np.mean([c["iou"] for c in per_class.values()])) if per_class else None,
        "macc": float(np.mean([c["acc"] for c in per_class.values()])) if per_class else None,
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
                      max_images: Optional[int] = None, progress: bool = False,
                      mask_threshold: float = 0.0, assignment: str = "on-object") -> dict:
    """Protocol (a) with the ``on-object`` or ``reference`` assignment; masks the assignment
    drops (they vanish on the embedding grid) are misses."""
    if assignment not in PROMPTED.values():
        raise ValueError(f"unknown assignment {assignment!r}; known: "
                         f"{', '.join(PROMPTED.values())}")
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
        a = assign_nearest(emb[0], masks, size, points_per_side, min_coverage,
                           on_object=assignment == "on-object")
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
            pred[torch.as_tensor(a.keep, device=model.device)] = full > mask_threshold
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
    return {**summarize(stats, class_aware), "assignment": assignment}


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
    """COCO mask AP, AP50, AP75 (pycocotools) of detections against ground truth; None where
    there is no (non-crowd) ground truth."""
    if not dts:  # pycocotools' loadRes cannot take an empty list
        value = 0.0 if any(not g["iscrowd"] for g in gts) else None
        return {"ap": value, "ap50": value, "ap75": value}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gts, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in dts])  # loadRes writes into its detections
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 means "no ground truth in this bucket"
    return {k: None if v < 0 else float(v) for k, v in zip(("ap", "ap50", "ap75"), ev.stats[:3])}


def gt_annotations(sample: Sample, image_id: int, first_id: int) -> list[dict]:
    """COCO ground truth of one image: its instances, then its crowd regions with iscrowd 1
    (pycocotools ignores detections on them instead of counting them as false positives)."""
    out = []
    regions = [(m, c, 0) for m, c in zip(sample.masks, sample.class_ids)]
    regions += [(m, c, 1) for m, c in zip(sample.crowd_masks, sample.crowd_class_ids)]
    for mask, class_id, crowd in regions:
        rle = _rle(mask)
        out.append({"id": first_id + len(out), "image_id": image_id, "segmentation": rle,
                    "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": crowd, "category_id": int(class_id)})
    return out


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
        image_gts = gt_annotations(sample, i + 1, len(gts) + 1)
        gts += image_gts
        # matching and IoU/Acc use the instances only, never the crowd regions
        gt_rles = [g["segmentation"] for g in image_gts if not g["iscrowd"]]
        dt_rles = [_rle(m) for m in inst.masks]
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
    result["predictions_per_image"] = n_pred / n if n else None
    result["match_iou"] = match_iou
    return result


def _check_arguments(checkpoints: Sequence[str | os.PathLike], names: Sequence[str],
                     protocols: Sequence[str]) -> None:
    """ValueError for names that do not pair up with the checkpoints one to one (a repeated name
    would keep only its last model's results) and for no or unknown protocols."""
    if len(checkpoints) != len(names):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(names)} names")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        shared = "; ".join(f"{n!r} names " + ", ".join(
            str(c) for c, m in zip(checkpoints, names) if m == n) for n in repeated)
        raise ValueError(f"each checkpoint needs its own name: {shared}; give them distinct "
                         "names with --names")
    if not protocols:
        raise ValueError(f"no protocol to run; known: {', '.join(PROTOCOLS)}")
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(PROTOCOLS)}")


def _load_with_settings(path: str | os.PathLike, model_type: Optional[str], device: str,
                        explicit: dict) -> tuple[Saom, EverythingSettings]:
    """The checkpoint's model and its everything-mode settings under ``explicit``."""
    model = load_model(path, model_type=model_type, device=device)
    try:
        return model, settings_for(model, **explicit)
    except ValueError as err:
        raise ValueError(f"evaluate.everything / {path}: {err}") from None


def evaluate_checkpoints(checkpoints: Sequence[str | os.PathLike], names: Sequence[str], dataset,
                         cfg: dict, out_dir: str | os.PathLike, device: str = "cpu",
                         model_type: Optional[str] = None,
                         protocols: Sequence[str] = ("prompted", "everything"),
                         progress: bool = True) -> dict:
    """Evaluate every checkpoint under ``protocols`` (of PROTOCOLS); write results.json and
    results.md to ``out_dir``.

    Each checkpoint runs with its own everything-mode settings (``settings_for``) under the
    values ``cfg['evaluate']`` sets (``points_per_side`` and ``everything``; null: not set).
    Their grid and mask_threshold are used by every protocol.
    """
    _check_arguments(checkpoints, names, protocols)
    ec = cfg["evaluate"]
    explicit = {"points_per_side": ec["points_per_side"], **ec["everything"]}
    # A bad later checkpoint must fail in seconds, not after the earlier ones' evaluation (hours
    # for large models). Each is loaded on the CPU and dropped: several ViT-H models kept for
    # their turn would not fit on one GPU, and a second load costs seconds. The first one's own
    # load comes before any evaluation anyway.
    for path in checkpoints[1:]:
        _load_with_settings(path, model_type, "cpu", explicit)
    results = {"dataset_images": (len(dataset) if ec["max_images"] is None
                                  else min(len(dataset), int(ec["max_images"]))),
               "settings": {"match_iou": float(ec["match_iou"]), "explicit": explicit},
               "models": {}}
    for path, name in zip(checkpoints, names):
        model, settings = _load_with_settings(path, model_type, device, explicit)
        entry = {"checkpoint": str(path), "class_aware": model.class_head is not None,
                 "everything_settings": dataclasses.asdict(settings)}
        for protocol in (p for p in PROMPTED if p in protocols):
            entry[protocol] = evaluate_prompted(
                model, dataset, settings.points_per_side,
                float(cfg["assignment"]["min_coverage"]), ec["max_images"], progress,
                settings.mask_threshold, PROMPTED[protocol])
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


# protocol -> its name in the summary table and the title of its per-class table
_TITLES = {"prompted": ("prompted on-object", "Prompted with the assigned grid point, on-object "
                        "assignment (training's; it favours the model)"),
           "prompted-reference": ("prompted reference", "Prompted with the assigned grid point, "
                                  "reference assignment (the reference code's)"),
           "everything": ("everything", "Everything mode")}


def markdown_report(results: dict) -> str:
    """Summary table plus one per-class IoU/Acc table per protocol, models side by side."""
    models = results["models"]
    lines = ["# Evaluation", "",
             f"{results['dataset_images']} images; everything-mode match IoU > "
             f"{results['settings']['match_iou']}. Numbers in %; - where undefined. "
             "Everything-mode settings (each checkpoint's own under the explicit options; the "
             "grid and mask_threshold are also the prompted protocols'):", ""]
    lines += [f"- {name}: " + ", ".join(f"{k} {v}" for k, v in m["everything_settings"].items()
                                        if k not in RUNTIME_FIELDS)
              for name, m in models.items()]
    # the on-object and everything columns always, the reference ones when it was run
    columns = [p for p in PROTOCOLS
               if p != "prompted-reference" or any(p in m for m in models.values())]
    header = [f"{_TITLES[p][0]} {k}" for p in columns for k in ("mIoU", "mAcc", "class acc")]
    header += ["mask AP (class-agnostic)", "mask AP50 (class-agnostic)", "mask AP (per class)",
               "predictions / image"]
    lines += ["", "| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for name, m in models.items():
        cells = [_pct(m.get(p, {}).get(k)) for p in columns
                 for k in ("miou", "macc", "class_accuracy")]
        e = m.get("everything", {})
        ppi = e.get("predictions_per_image")
        cells += [_pct((e.get("coco_agnostic") or {}).get("ap")),
                  _pct((e.get("coco_agnostic") or {}).get("ap50")),
                  _pct((e.get("coco") or {}).get("ap")), "-" if ppi is None else f"{ppi:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for protocol in PROTOCOLS:
        present = [n for n, m in models.items() if protocol in m]
        if present:
            lines += ["", f"## {_TITLES[protocol][1]}", ""]
            lines += _per_class_table(models, protocol, present)
    return "\n".join(lines) + "\n"


def _per_class_table(models: dict, protocol: str, present: list[str]) -> list[str]:
    """Rows of one protocol's per-class IoU/Acc table, the models side by side."""
    classes = sorted({c for n in present for c in models[n][protocol]["per_class"]})
    lines = ["| class | instances | " + " | ".join(f"{n} IoU | {n} Acc" for n in present) + " |",
             "|---|---|" + "---|---|" * len(present)]
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
    return lines + ["| **mean** | | " + " | ".join(means) + " |"]
