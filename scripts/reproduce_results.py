#!/usr/bin/env python3
"""The SAOM claim in miniature, end to end: data, baseline, SAOM recipes, ablations, report, model.

1. ``saom-train synth``: a train and a held-out test set of synthetic indoor scenes.
2. A part-biased baseline (the stand-in for SAM): a tiny SAM trained from scratch on the parts.
3. The baseline fine-tuned on whole objects with classes: the paper's recipe (single-point
   nearest-neighbour assignment) with its two ablations (random prompts; no IoU loss), the
   paper's recipe with multi-point assignment (the hypothesis test), and the shipped recipe.
4. Everything-mode (and prompted) evaluation of all of them on the test set, with the settings
   the shipped model carries -> docs/results.md and docs/results.json.
5. The shipped recipe's model exported to saom_ros/data/saom_small.pt (the node's embedded
   default, carrying those settings) and the first test scenes copied to
   saom_ros/data/demo_frames/ (what `make demo` plays).

All sizes and settings are in config/experiment.yaml. Every stage resumes: rerunning after an
interruption continues where it stopped (finished stages are skipped).

    .venv/bin/python scripts/reproduce_results.py            # docs/results.md has the time
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from saom_ros.atomic import atomic_write_text
from saom_ros.training import datasets, evaluate, finetune
from saom_ros.training.config import load_config
from saom_ros.training.export import export
from saom_ros.training.train_state import load_train_state
from saom_ros.training.synthetic import ANNOTATIONS, PART_ANNOTATIONS, write_dataset
from saom_ros.training.synthetic_scenes import SYNTH_CLASSES

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "config" / "experiment.yaml"
COMMAND = ".venv/bin/python scripts/reproduce_results.py"
# The names the report uses for the stages of config/experiment.yaml, in table order.
TITLES = {"baseline": "Baseline (part-biased, SAM stand-in)",
          "saom_paper": "SAOM as in the paper (single-point assignment)",
          "multi_point": "SAOM as in the paper, multi-point assignment",
          "saom": "SAOM-small (shipped recipe)",
          "no_nearest_neighbour": "SAOM as in the paper without nearest-neighbour assignment",
          "no_iou_loss": "SAOM as in the paper without IoU loss"}
ABLATIONS = ("no_nearest_neighbour", "no_iou_loss")  # each against saom_paper
FORMER = ("saom_paper", "multi_point", "saom")  # also evaluated with the former settings
# Large furniture: many grid points on each object, the classes the hypothesis is about.
LARGE = ("Bed", "Cabinet", "DiningTable", "Fridge", "Sofa")
# What the shipped model must reach (issue: whole objects of every size).
TARGETS = {"miou": 0.50, "min_class_iou": 0.30, "class_accuracy": 0.70,
           "miou_relative_gain_pct": 28.0, "checkpoint_mb": 5.0, "total_min": 60.0}


def stage_specs(exp: dict) -> dict[str, dict]:
    """Stages with ``extends`` resolved: data, init and the full override list of each."""
    stages = exp["stages"]
    out: dict[str, dict] = {}
    for name, spec in stages.items():
        base = stages[spec["extends"]] if "extends" in spec else {}
        out[name] = {"data": spec.get("data", base.get("data")),
                     "init": spec.get("init", base.get("init")),
                     "overrides": [*base.get("overrides", []), *spec.get("overrides", [])]}
        if out[name]["data"] not in ("parts", "objects"):
            raise ValueError(f"{EXPERIMENT}: stage {name} needs data: parts or objects")
    return out


def train_stage(name: str, spec: dict, exp: dict, work: Path, train_dir: Path,
                device: str) -> Path:
    """Train (or resume, or skip if finished) one stage; returns its exported SAOM checkpoint."""
    run_dir = work / "runs" / name
    model_path = work / "models" / f"{name}.pt"
    annotations = train_dir / (PART_ANNOTATIONS if spec["data"] == "parts" else ANNOTATIONS)
    overrides = [*exp["common_overrides"], *spec["overrides"],
                 f"assignment.points_per_side={exp['points_per_side']}", f"train.device={device}",
                 f"data.train={annotations}", f"train.run_dir={run_dir}"]
    if spec["init"]:
        overrides.append(f"model.init={work / 'models' / (spec['init'] + '.pt')}")
    cfg = load_config(None, overrides)
    last = run_dir / "checkpoints" / "last.pt"
    total = int(cfg["train"]["max_steps"])
    timing = model_path.with_suffix(".json")
    if last.is_file() and int(load_train_state(last)["step"]) >= total \
            and model_path.is_file() and timing.is_file():
        print(f"[{name}] already trained ({total} steps)")
        return model_path
    print(f"[{name}] training {total} steps on {annotations.name} -> {run_dir}", flush=True)
    t0 = time.monotonic()
    finetune.train(cfg, resume=True, progress=sys.stderr.isatty())
    export(run_dir, model_path)
    # Wall time of this (possibly resumed) session; the report reads it back.
    atomic_write_text(timing, json.dumps({"wall_s": time.monotonic() - t0,
                                                   "device": device, "steps": total}))
    return model_path


def stage_wall_time(model_path: Path) -> float:
    return float(json.loads(model_path.with_suffix(".json").read_text())["wall_s"])


def summary_row(name: str, results: dict) -> dict[str, Any]:
    e = results["models"][name]["everything"]
    p = results["models"][name].get("prompted", {})
    return {"miou": e["miou"], "macc": e["macc"], "class_accuracy": e["class_accuracy"],
            "mask_ap_agnostic": e["coco_agnostic"]["ap"],
            "predictions_per_image": e["predictions_per_image"],
            "per_class_iou": {c: v["iou"] for c, v in sorted(e["per_class"].items())},
            "prompted": {k: p.get(k) for k in ("miou", "macc", "class_accuracy")}}


def large_mean(row: dict) -> float:
    """Mean IoU over the large-furniture classes present."""
    values = [row["per_class_iou"][c] for c in LARGE if c in row["per_class_iou"]]
    return sum(values) / max(len(values), 1)


def check_targets(shipped: dict, gap: dict, checkpoint_mb: float, total_min: float) -> dict:
    """Each target of the shipped model: its measured value and whether it is met."""
    worst = min(shipped["per_class_iou"], key=shipped["per_class_iou"].get)
    measured = {"miou": shipped["miou"], "min_class_iou": shipped["per_class_iou"][worst],
                "class_accuracy": shipped["class_accuracy"],
                "miou_relative_gain_pct": gap["miou_relative"], "checkpoint_mb": checkpoint_mb,
                "total_min": total_min}
    at_most = {"checkpoint_mb", "total_min"}
    # class accuracy is None when nothing was matched: not met
    out = {k: {"target": t, "measured": measured[k],
               "met": measured[k] is not None and (measured[k] <= t if k in at_most
                                                   else measured[k] >= t)}
           for k, t in TARGETS.items()}
    out["min_class_iou"]["class"] = worst
    return out


def pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def report(results: dict, summary: dict, exp: dict, timings: dict, environment: dict) -> str:
    """docs/results.md: the claim, the hypothesis test, the targets, the ablations, how to
    reproduce."""
    b, p, m, s = (summary[n] for n in ("baseline", "saom_paper", "multi_point", "saom"))
    gap = summary["gap"]
    rows = []
    for name in TITLES:
        r = summary[name]
        agnostic = not results["models"][name]["class_aware"]
        rows.append(f"| {TITLES[name]} | {pct(r['miou'])} | {pct(r['macc'])} | "
                    f"{'n/a (class-agnostic)' if agnostic else pct(r['class_accuracy'])} | "
                    f"{pct(large_mean(r))} | {pct(min(r['per_class_iou'].values()))} | "
                    f"{pct(r['mask_ap_agnostic'])} | {r['predictions_per_image']:.1f} |")
    stage_lines = [f"| {name} | {timings[name]:.0f} s |" for name in TITLES]
    ev = exp["evaluate"]["everything"]
    grid = f"{exp['points_per_side']}x{exp['points_per_side']}"
    train, test = exp["data"]["train"], exp["data"]["test"]
    ablation = {n: 100 * (summary[n]["miou"] - p["miou"]) for n in ABLATIONS}
    per_class = {n: summary[n]["per_class_iou"] for n in ("baseline", "saom")}
    worse = sorted(c for c in per_class["saom"]
                   if per_class["saom"][c] < per_class["baseline"].get(c, 0))
    prompted = {n: results["models"][n].get("prompted")
                for n in ("baseline", "saom_paper", "saom")}
    prompted_line = ("" if not all(prompted.values()) else
                     f"Prompted with each object's assigned grid point (on-object: the arg-max kept on "
                     f"the object, as training assigns; `--protocol prompted-reference` gives the "
                     f"reference code's choice), "
                     f"the paper's recipe reaches {pct(prompted['saom_paper']['miou'])}% mIoU, "
                     f"the shipped one {pct(prompted['saom']['miou'])}%, the baseline "
                     f"{pct(prompted['baseline']['miou'])}%. ")
    worse_line = ("SAOM-small beats the baseline on every class." if not worse else
                  f"SAOM-small is still below the baseline on {', '.join(worse)}.")
    verdict = ("Claim reproduced: fine-tuning the part-biased model on whole objects turned it "
               "into a whole-object model."
               if gap["miou_points"] > 0 and gap["macc_points"] > 0 else
               "Claim NOT reproduced in this run: SAOM-small does not beat the part-biased "
               "baseline.")
    hyp_large = 100 * (large_mean(m) - large_mean(p))
    hypothesis = (
        f"Multi-point assignment alone (the paper's recipe otherwise unchanged) moves the large "
        f"furniture ({', '.join(LARGE)}) from {pct(large_mean(p))}% to {pct(large_mean(m))}% "
        f"mean IoU ({hyp_large:+.1f} points) and mIoU from {pct(p['miou'])}% to "
        f"{pct(m['miou'])}% ({100 * (m['miou'] - p['miou']):+.1f} points); class accuracy "
        f"{pct(p['class_accuracy'])}% -> {pct(m['class_accuracy'])}%.")
    per_class_hyp = ", ".join(
        f"{c} {pct(p['per_class_iou'][c])} -> {pct(m['per_class_iou'][c])}"
        for c in sorted(p["per_class_iou"]))
    specs = stage_specs(exp)
    shipped_extra = ", ".join(f"`{o}`" for o in specs["saom"]["overrides"]
                              if o not in specs["saom_paper"]["overrides"])
    targets = summary["targets"]
    labels = {"miou": ("mIoU", "%"), "min_class_iou": ("worst class IoU", "%"),
              "class_accuracy": ("class accuracy", "%"),
              "miou_relative_gain_pct": ("mIoU gain over the baseline, relative", "% rel."),
              "checkpoint_mb": ("checkpoint size", " MB"),
              "total_min": ("training + evaluation time", " min")}
    target_lines = []
    for key, t in targets.items():
        label, unit = labels[key]
        scale = 100 if unit == "%" else 1
        sign = "<=" if key in ("checkpoint_mb", "total_min") else ">="
        extra = f" ({t['class']})" if key == "min_class_iou" else ""
        value = "n/a" if t["measured"] is None else f"{scale * t['measured']:.1f}{unit}"
        target_lines.append(f"| {label} | {sign} {scale * t['target']:.4g}{unit} | "
                            f"{value}{extra} | {'yes' if t['met'] else '**no**'} |")
    former = summary["former_settings"]
    former_rows = [f"| {TITLES[n]} | {pct(former[n]['miou'])} | {pct(summary[n]['miou'])} | "
                   f"{pct(large_mean(former[n]))} | {pct(large_mean(summary[n]))} | "
                   f"{former[n]['predictions_per_image']:.1f} | "
                   f"{summary[n]['predictions_per_image']:.1f} |" for n in FORMER]
    former_desc = ", ".join(f"{k} {v}" for k, v in former["settings"].items())
    text = f"""# Results: the SAOM claim in miniature, and whole objects of every size

Generated by `{COMMAND}` (config: `config/experiment.yaml`); do not edit by hand.
Run on {environment['machine']}, {environment['threads']} torch thread(s):
{environment['total_min']:.1f} min of training and evaluation (the sum of the stages' wall
times; the machine's 5-minute load average was {environment['load_average']:.1f} when the
evaluation started, so other jobs shared its cores).

**{verdict}** On {results['dataset_images']} held-out synthetic scenes, everything mode:
**SAOM-small {pct(s['miou'])}% mIoU vs {pct(b['miou'])}% for the part-biased baseline, a gap of
{gap['miou_points']:+.1f} points ({gap['miou_relative']:+.0f}% relative)** (mAcc
{pct(s['macc'])}% vs {pct(b['macc'])}%, {gap['macc_points']:+.1f} points); SAOM-small gives the
right class to {pct(s['class_accuracy'])}% of the objects it finds. The paper reports +28% mIoU
and +25% mAcc over SAM on its Ai2Thor data without saying whether in points or relative.

**The hypothesis** (a large object covers many grid points, single-point assignment trains only
one of them, the others return parts that compete with the whole object): {hypothesis}

## Targets of the shipped model (`saom_ros/data/saom_small.pt`)

With the everything-mode settings it carries (below), on the held-out test scenes:

| target | required | measured | met |
|---|---|---|---|
{chr(10).join(target_lines)}

## Setup
- Data: `saom-train synth`, {train['num_images']} training scenes (seed {train['seed']}) and
  {test['num_images']} test scenes (seed {test['seed']}, never trained on), 256x256,
  {len(SYNTH_CLASSES)} SAOM classes ({', '.join(SYNTH_CLASSES)}). Every object is drawn as 2-4
  parts of different colour and texture; occlusion, textured walls and floors, lighting gain,
  gradient and noise.
- Model: the `tiny` preset (SAM architecture, 256-px input, ViT of depth 2, ~0.6 M
  parameters), trained with our own code (`saom-train train`).
- Baseline (stand-in for SAM's part bias): trained from scratch on the class-agnostic part
  masks with SAM-style random point prompts, encoder included.
- SAOM as in the paper: the baseline fine-tuned on the whole objects with their classes:
  frozen encoder, one prompt per object (nearest-neighbour assignment to the {grid}
  everything-mode grid), a new class head, dice + focal + cross-entropy + IoU loss.
- Multi-point assignment (`assignment.prompt_mode: multi`): each object keeps its
  nearest-neighbour point and gets up to `points_per_mask - 1` more grid points lying on it,
  drawn with probability proportional to their distance from its edge; every one is trained
  to return the whole object with its class.
- SAOM-small, the shipped recipe: the paper's with {shipped_extra} (stage `saom` of
  `config/experiment.yaml`).
- Ablations of the paper's recipe: a random pixel inside each mask as its prompt (no
  nearest-neighbour assignment), and no IoU loss.
- Evaluation: everything mode with the settings the shipped model carries, the same for every
  model ({grid} grid, pred_iou_thresh {ev['pred_iou_thresh']}, stability_score_thresh
  {ev['stability_score_thresh']}, box_nms_thresh {ev['box_nms_thresh']},
  min_mask_region_area {ev['min_mask_region_area']}; chosen on validation scenes of another
  seed, never on the test scenes). Predictions are matched greedily to ground truth by IoU;
  per class, IoU = sum of intersections / sum of unions and Acc = sum of intersections /
  ground-truth area, an unmatched object counting as an empty mask; mIoU and mAcc are means
  over classes. Class accuracy: the share of matched objects whose predicted class is right.

## Everything mode, held-out test scenes (numbers in %)

| model | mIoU | mAcc | class accuracy | large furniture IoU | worst class IoU | mask AP (class-agnostic) | predictions / image |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Gap SAOM-small - baseline: **{gap['miou_points']:+.1f} mIoU points**
({gap['miou_relative']:+.0f}% relative), **{gap['macc_points']:+.1f} mAcc points**
({gap['macc_relative']:+.0f}% relative). {worse_line} Ablations against the paper's recipe:
without nearest-neighbour assignment {ablation['no_nearest_neighbour']:+.1f} mIoU points;
without the IoU loss {ablation['no_iou_loss']:+.1f} mIoU points. {prompted_line}
Per class IoU, paper's recipe -> multi-point: {per_class_hyp}.

## The everything-mode settings hid the large objects

The same models under the former evaluation settings ({former_desc}, the rest as above):
this small model's masks of large objects are soft, and the stability filter dropped many of
them, whichever the recipe.

| model | mIoU, former settings | mIoU | large furniture IoU, former settings | large furniture IoU | predictions / image, former settings | predictions / image |
|---|---|---|---|---|---|---|
{chr(10).join(former_rows)}

## Time per stage

| stage | wall time |
|---|---|
{chr(10).join(stage_lines)}
| evaluation | {timings['evaluation']:.0f} s |

## Reproduce

```
make setup
{COMMAND}
```
It writes this file, `docs/results.json`, `saom_ros/data/saom_small.pt` (the node's embedded
default) and `saom_ros/data/demo_frames/`; intermediate runs go to `runs/reproduce/` and are
resumed (finished stages are skipped), so rerunning it only re-evaluates. The numbers move
with floating-point order: re-evaluating the same checkpoints in a fresh process moved mIoU by
up to 1 point here (within one process the engine is deterministic); a different torch build or
thread count can move training, and so the numbers, by a few points.

## Full evaluation tables

"""
    detail = evaluate.markdown_report(results).split("\n", 1)[1]  # drop its title
    return text + detail.replace("\n## ", "\n### ")


def bundle_demo_frames(test_dir: Path, count: int, out: Path) -> list[str]:
    """Copy the first ``count`` test scenes (never trained on) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    names = []
    for i, src in enumerate(sorted((test_dir / "images").glob("*.png"))[:count]):
        shutil.copyfile(src, out / f"frame_{i:02d}.png")
        names.append(f"frame_{i:02d}.png")
    return names


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=EXPERIMENT, help="experiment settings")
    parser.add_argument("--work", type=Path, default=Path("runs") / "reproduce",
                        help="datasets, training runs and evaluation (resumable; relative to "
                        "the repository)")
    parser.add_argument("--out", type=Path, default=ROOT, help="where docs/results.* and "
                        "saom_ros/data/ are written (default: this repository)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--threads", type=int, help="torch threads (default: experiment.yaml)")
    parser.add_argument("--stages", help="comma-separated stages to train, then stop (e.g. to "
                        "train the ablations in parallel processes); default: everything")
    args = parser.parse_args(argv)
    exp = yaml.safe_load(args.config.read_text())
    threads = args.threads or int(exp["threads"])
    torch.set_num_threads(threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    args.out = args.out.resolve()
    os.chdir(ROOT)  # paths in the report are relative to the repository
    work = args.work

    d = exp["data"]
    train_dir = write_dataset(work / "synth_train", d["train"]["num_images"], d["train"]["seed"])
    test_dir = write_dataset(work / "synth_test", d["test"]["num_images"], d["test"]["seed"])
    print(f"datasets: {train_dir}, {test_dir}")

    specs = stage_specs(exp)
    if args.stages:
        unknown = set(args.stages.split(",")) - set(specs)
        if unknown:
            parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(specs)}")
        for name in args.stages.split(","):
            train_stage(name, specs[name], exp, work, train_dir, device)
        return 0
    timings: dict[str, float] = {}
    models: dict[str, Path] = {}
    for name, spec in specs.items():
        models[name] = train_stage(name, spec, exp, work, train_dir, device)
        timings[name] = stage_wall_time(models[name])

    load_average = os.getloadavg()[1]  # other jobs on the machine slow every stage
    t0 = time.monotonic()
    cfg = load_config(None, [{"evaluate": exp["evaluate"]},
                                      f"assignment.points_per_side={exp['points_per_side']}"])
    test = datasets.open_dataset(test_dir / ANNOTATIONS)
    results = evaluate.evaluate_checkpoints(
        [models[n] for n in TITLES], list(TITLES), test, cfg, work / "evaluation", device=device,
        progress=sys.stderr.isatty())
    # The recipes again under the former settings, which hid most large objects' masks.
    former_cfg = load_config(None, [cfg, {"evaluate": {"everything": exp["former"]}}])
    former = evaluate.evaluate_checkpoints(
        [models[n] for n in FORMER], list(FORMER), test, former_cfg, work / "evaluation_former",
        device=device, protocols=("everything",), progress=sys.stderr.isatty())
    timings["evaluation"] = time.monotonic() - t0

    summary: dict[str, Any] = {n: summary_row(n, results) for n in TITLES}
    b, s = summary["baseline"], summary["saom"]
    summary["gap"] = {"miou_points": 100 * (s["miou"] - b["miou"]),
                      "macc_points": 100 * (s["macc"] - b["macc"]),
                      "miou_relative": 100 * (s["miou"] / max(b["miou"], 1e-9) - 1),
                      "macc_relative": 100 * (s["macc"] / max(b["macc"], 1e-9) - 1)}
    shipped = args.out / "saom_ros" / "data" / "saom_small.pt"
    export(work / "runs" / "saom", shipped, everything=exp["demo"])
    shipped.chmod(0o644)  # the package file is public whatever the umask
    frames = bundle_demo_frames(test_dir, int(d["demo_frames"]),
                                shipped.parent / "demo_frames")
    environment = {"machine": (torch.cuda.get_device_name() if device == "cuda" else
                               f"{platform.machine()} CPU, {os.cpu_count()} cores")
                   + f", torch {torch.__version__}", "device": device,
                   # training (possibly over several resumed sessions) plus evaluation
                   "threads": threads, "total_min": sum(timings.values()) / 60,
                   "load_average": load_average}
    summary["former_settings"] = {"settings": exp["former"],
                                  **{n: summary_row(n, former) for n in FORMER}}
    summary["targets"] = check_targets(s, summary["gap"], shipped.stat().st_size / 1e6,
                                       environment["total_min"])
    payload = {"command": COMMAND, "config": exp, "environment": environment,
               "timings_s": timings, **summary,
               "shipped_checkpoint": "saom_ros/data/saom_small.pt", "demo_frames": frames,
               "evaluation": results}
    docs = args.out / "docs"
    atomic_write_text(docs / "results.json", json.dumps(payload, indent=2))
    atomic_write_text(docs / "results.md", report(results, summary, exp, timings,
                                                           environment))
    missed = [k for k, t in summary["targets"].items() if not t["met"]]
    print(f"baseline mIoU {pct(b['miou'])}; paper's recipe {pct(summary['saom_paper']['miou'])}; "
          f"SAOM-small mIoU {pct(s['miou'])} mAcc {pct(s['macc'])} class acc "
          f"{pct(s['class_accuracy'])}; gap {summary['gap']['miou_points']:+.1f} mIoU points; "
          f"targets missed: {', '.join(missed) or 'none'}. Wrote docs/results.md, "
          f"docs/results.json, saom_ros/data/saom_small.pt under {args.out} in "
          f"{environment['total_min']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
