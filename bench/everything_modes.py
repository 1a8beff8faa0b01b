"""Benchmark: everything-mode prompt strategies against the exact grid, on the embedded SAOM-small.

- hierarchical vs grid on held-out synthetic scenes (``saom-train synth`` with a seed that no
  training stage of config/experiment.yaml uses);
- streaming vs grid on synthetic camera sequences made from such scenes: the camera pans, zooms,
  or the objects move a few pixels per frame over an inpainted background.

Both modes run with the settings the checkpoint carries (``settings_for``); mIoU comes from
training/evaluate.py's everything-mode scoring (greedy IoU matching, per-class IoU sums); times
are medians per frame in this process, each mode running a block of frames back to back (a
camera sequence, or BLOCK scenes) and the two alternating block by block, in turn first, as a
node runs one mode frame after frame: alternating frame by frame put every streamed frame right
after a 256-prompt grid frame, whose memory traffic cost it 12-14% of its time in our runs
(each mode's line also gives its mean, which counts streaming's keyframes).
The last line reads ``hierarchical_speedup=<x> hierarchical_miou_delta=<points>
streaming_speedup=<x> streaming_miou_delta=<points>`` (deltas: mode minus exact); with
``--seeds``, each seed's line comes first and the last line gives their means over the seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
import yaml

from bench_args import load_checkpoint, positive_int, torch_device
from saom_ros.everything import EverythingEngine, Instances
from saom_ros.everything_settings import settings_for
from saom_ros.malloc_settings import keep_freed_memory
from saom_ros.model import Saom
from saom_ros.training.datasets import CocoInstances, Sample
from saom_ros.training.evaluate import ClassStats, match_greedy, score_matches, summarize
from saom_ros.training.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "saom_ros" / "data" / "saom_small.pt"
BLOCK = 20  # hierarchical: scenes per mode and turn (a camera sequence's frames for streaming)
# A frame to segment: image, ground-truth masks [N, H, W] and their class ids [N].
Frame = tuple[np.ndarray, np.ndarray, np.ndarray]


def training_seeds() -> set[int]:
    """Every dataset seed config/experiment.yaml trains on."""
    data = yaml.safe_load((ROOT / "config" / "experiment.yaml").read_text())["data"]
    return {int(v["seed"]) for v in data.values() if isinstance(v, dict) and "seed" in v}


class Scorer:
    """Everything-mode mIoU over many frames with training/evaluate.py's scoring."""

    def __init__(self, model: Saom, class_names: Sequence[str]) -> None:
        self.model, self.class_names = model, list(class_names)
        self.stats: dict[str, ClassStats] = {}

    def add(self, masks: np.ndarray, class_ids: np.ndarray, inst: Instances) -> None:
        # The IoU matrix on torch's threads, which the engines use too: numpy's product would
        # start OpenBLAS's own threads, which spin on the cores after it and slowed the next
        # timed frame (the encoder after it: 7.2 ms instead of 2.9 ms).
        gt = torch.from_numpy(masks.reshape(len(masks), masks[0].size)).float()
        pred = torch.from_numpy(inst.masks.reshape(len(inst), masks[0].size)).float()
        inter = gt @ pred.T
        union = gt.sum(1)[:, None] + pred.sum(1)[None] - inter
        iou = (inter / union.clamp(min=1)).numpy()
        names = [self.model.class_names[c - 1] for c in inst.class_ids.tolist()]
        gt_names = [self.class_names[int(c) - 1] for c in class_ids]
        score_matches(self.stats, masks, gt_names, inst.masks, names, match_greedy(iou, 0.0))

    @property
    def miou(self) -> float:
        return summarize(self.stats, True)["miou"]


def _timed(fn: Callable[[], Instances]) -> tuple[Instances, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved by (dx, dy) pixels; what leaves the frame is cut."""
    out = np.zeros_like(mask)
    h, w = mask.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def camera_sequence(sample: Sample, kind: str, frames: int, rng: np.random.Generator
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames (image, masks [N, H, W]) of one scene under ``kind`` motion: ``pan`` (a window
    sliding 2 px per frame), ``zoom`` (a window shrinking 1.5 px per side per frame), each
    resized back to the scene size, or ``objects`` (every object moves by its own velocity of
    1-3 px per frame, painted back to front over the inpainted background)."""
    image, masks = sample.image, sample.masks
    h, w = image.shape[:2]
    if kind == "objects":
        background = cv2.inpaint(image, masks.any(0).astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
        velocity = rng.integers(-3, 4, (len(masks), 2))
        for t in range(frames):
            frame, owner = background.copy(), np.full((h, w), -1)
            for k, m in enumerate(masks):
                dx, dy = (velocity[k] * t).tolist()
                moved = _shift(m, dx, dy)
                frame[moved] = _shift(image * m[..., None], dx, dy)[moved]
                owner[moved] = k
            yield frame, np.stack([owner == k for k in range(len(masks))])
        return
    margin = 2 * frames if kind == "pan" else int(1.5 * frames) + 1
    for t in range(frames):
        if kind == "pan":
            x0, y0, x1, y1 = 2 * t, margin // 2, w - margin + 2 * t, h - margin // 2
        else:
            s = int(1.5 * t)
            x0, y0, x1, y1 = s, s, w - s, h - s
        crop = image[y0:y1, x0:x1]
        frame = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
        moved = np.stack([cv2.resize(m[y0:y1, x0:x1].astype(np.uint8), (w, h),
                                     interpolation=cv2.INTER_NEAREST) > 0 for m in masks])
        yield frame, moved


def bench_hierarchical(model: Saom, dataset: CocoInstances, n: int,
                       device: str = "cpu") -> tuple[float, float]:
    """(speedup, mIoU delta in points) of hierarchical over the grid on ``n`` scenes."""
    base = settings_for(model)
    exact = EverythingEngine(model, base, device)
    hier = EverythingEngine(model, dataclasses.replace(base, prompt_strategy="hierarchical"),
                            device)
    scores = {"grid": Scorer(model, dataset.class_names),
              "hierarchical": Scorer(model, dataset.class_names)}
    times: dict[str, list[float]] = {k: [] for k in scores}
    points: dict[str, list[int]] = {k: [] for k in scores}
    for engine in (exact, hier):  # on CUDA: graph capture and kernel autotuning
        engine.warm_up()
    engines = {"grid": exact, "hierarchical": hier}
    for turn, start in enumerate(range(0, n, BLOCK)):
        samples = [dataset[i] for i in range(start, min(n, start + BLOCK))]
        block = [(x.image, x.masks, x.class_ids) for x in samples]
        for name in _in_turn(list(engines), turn):
            _run_block(engines[name], block, times[name], points[name], scores[name])
    return _report("hierarchical", times, scores, points)


def _in_turn(names: list[str], turn: int) -> list[str]:
    """The modes in the order they run a block: each first in every other turn."""
    return names if turn % 2 == 0 else names[::-1]


def _run_block(engine: EverythingEngine, block: Sequence[Frame], times: list[float],
               points: list[int], scores: Scorer) -> None:
    """Segment the frames of ``block`` back to back, each with the result before it (which
    only streaming uses), timed and scored."""
    previous: Optional[Instances] = None
    for image, masks, class_ids in block:
        previous, dt = _timed(lambda: engine(image, previous))
        times.append(dt)
        points.append(previous.points_decoded)
        scores.add(masks, class_ids, previous)


def bench_streaming(model: Saom, dataset: CocoInstances, sequences: int, frames: int,
                    seed: int, device: str = "cpu") -> tuple[float, float]:
    """(speedup, mIoU delta in points) of streaming over the grid on camera sequences."""
    base = settings_for(model)
    exact = EverythingEngine(model, base, device)
    exact.warm_up()
    names = ("grid", "streaming")
    scores = {k: Scorer(model, dataset.class_names) for k in names}
    times: dict[str, list[float]] = {k: [] for k in names}
    points: dict[str, list[int]] = {k: [] for k in names}
    rng = np.random.default_rng(seed)
    kinds = ("pan", "zoom", "objects")
    for s in range(sequences):
        sample = dataset[len(dataset) - 1 - s]  # scenes the hierarchical part uses last
        stream = EverythingEngine(model, dataclasses.replace(base, prompt_strategy="streaming"),
                                  device)
        stream.warm_up()
        block = [(image, masks, sample.class_ids)
                 for image, masks in camera_sequence(sample, kinds[s % len(kinds)], frames, rng)]
        engines = {"grid": exact, "streaming": stream}
        for name in _in_turn(list(engines), s):
            _run_block(engines[name], block, times[name], points[name], scores[name])
    return _report("streaming", times, scores, points)


def _report(mode: str, times: dict[str, list[float]], scores: dict[str, Scorer],
            points: dict[str, list[int]]) -> tuple[float, float]:
    t_exact, t_mode = (statistics.median(times[k]) for k in ("grid", mode))
    m_exact, m_mode = scores["grid"].miou, scores[mode].miou
    # The means count streaming's keyframes, which the medians pass over.
    print(f"{mode}: {len(times[mode])} frames; grid {t_exact * 1e3:.1f} ms, {mode} "
          f"{t_mode * 1e3:.1f} ms median per frame ({statistics.mean(times[mode]) * 1e3:.1f} ms "
          f"mean); points decoded per frame: grid {statistics.median(points['grid']):.0f}, "
          f"{mode} {statistics.median(points[mode]):.0f} median "
          f"({statistics.mean(points[mode]):.1f} mean); mIoU grid {100 * m_exact:.2f}%, "
          f"{mode} {100 * m_mode:.2f}%")
    return t_exact / t_mode, 100 * (m_mode - m_exact)


def bench_seed(model: Saom, seed: int, args: argparse.Namespace) -> tuple[float, ...]:
    """(hierarchical speedup, its delta, streaming speedup, its delta) on the scenes of ``seed``."""
    with tempfile.TemporaryDirectory() as tmp:
        dataset = CocoInstances(write_dataset(tmp, args.scenes + args.sequences, seed)
                                / "annotations.json")
        return (*bench_hierarchical(model, dataset, args.scenes, args.device),
                *bench_streaming(model, dataset, args.sequences, args.frames, seed, args.device))


def _line(result: Sequence[float]) -> str:
    hs, hd, ss, sd = result
    return (f"hierarchical_speedup={hs:.2f} hierarchical_miou_delta={hd:.2f} "
            f"streaming_speedup={ss:.2f} streaming_miou_delta={sd:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(CHECKPOINT))
    p.add_argument("--seed", type=int, default=7, help="synthetic-scene seed (never trained on)")
    p.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="several seeds, comma-separated (e.g. 7,11,13,17,19,23,29,31): a line "
                        "per seed, then the means over them as the last line")
    # Fewer scenes measure the draw more than the mode: with 40 scenes and 6 sequences the
    # deltas of eight seeds spread over 4.2 and 2.0 points.
    p.add_argument("--scenes", type=positive_int, default=160, help="scenes for hierarchical")
    p.add_argument("--sequences", type=positive_int, default=24,
                   help="camera sequences for streaming (a third each panned, zoomed, moving)")
    p.add_argument("--frames", type=positive_int, default=20, help="frames per sequence")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", type=torch_device, default="cpu",
                   help="cpu (the targets' device) or cuda (engines in cuda_dtype, warmed up)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc keeps freed memory, as the node sets it (saom_ros.malloc_settings)")
    args = p.parse_args(argv)
    seeds = args.seeds or [args.seed]
    trained = sorted(set(seeds) & training_seeds())
    if trained:
        raise SystemExit(f"seeds {trained} are training seeds of config/experiment.yaml")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and not keep_freed_memory():
        raise SystemExit("--keep-freed-memory needs glibc's mallopt")
    model = load_checkpoint(p, args.checkpoint)
    print(f"checkpoint {args.checkpoint}; settings {settings_for(model)}")
    results = []
    for seed in seeds:
        results.append(bench_seed(model, seed, args))
        if len(seeds) > 1:
            print(f"seed {seed}: {_line(results[-1])}", flush=True)
    if len(seeds) > 1:
        print(f"mean over seeds {','.join(map(str, seeds))}:")
    print(_line(np.mean(results, axis=0)))


if __name__ == "__main__":
    main()
