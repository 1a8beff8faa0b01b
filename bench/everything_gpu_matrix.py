"""Benchmark: every prompt strategy on large models and camera frame sizes (meant for a GPU).

For each model (random weights: no SAM weights can be downloaded here), frame size, prompt
strategy and threshold set, prints the median time per frame and the peak GPU memory. Random
weights pass almost no filter, so each configuration runs twice: with the generator's default
thresholds and with every threshold at 0 (the worst case: every mask of every prompt goes through
the full-size work and NMS). Streaming runs on a camera sequence (the scene shifted 2 px per
frame), keyframes included in the median; grid and hierarchical on one frame repeated.

    python bench/everything_gpu_matrix.py                      # vit_b and vit_h, 640x480 and 1280x720
    python bench/everything_gpu_matrix.py --models vit_b --sizes 640x480 --compile
    python bench/everything_gpu_matrix.py --models vit_b --sizes 640x480 --no-token-graphs
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from bench_args import choice_list, frame_sizes, positive_int, torch_device
from saom_ros.classes import SAOM_CLASSES
from saom_ros.everything import EverythingEngine, Instances
from saom_ros.everything_settings import PROMPT_STRATEGIES, EverythingSettings
from saom_ros.model import ModelConfig, build_saom
from saom_ros.model_config import PRESETS


def _bench_module(name: str):
    """A sibling benchmark script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic_scene = _bench_module("everything_vs_amg").synthetic_scene

THRESHOLDS = {"defaults": (EverythingSettings.pred_iou_thresh,
                           EverythingSettings.stability_score_thresh),
              "zero": (0.0, 0.0)}


def _frames(image: np.ndarray, count: int, step: int = 2) -> list[np.ndarray]:
    """A camera sequence: the scene panned ``step`` pixels right per frame."""
    return [np.roll(image, step * i, axis=1) for i in range(count)]


def _time_frames(engine: EverythingEngine, frames: Sequence[np.ndarray], sync) -> tuple[float, int]:
    """Median seconds per frame (each frame given the previous result) and the last count."""
    previous: Optional[Instances] = None
    times = []
    for image in frames:
        sync()
        t = time.perf_counter()
        previous = engine(image, previous=previous)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(previous)


def run_model(name: str, sizes: Sequence[tuple[int, int]], args: argparse.Namespace,
              device: torch.device) -> None:
    """Print one table row per (width, height) of ``sizes``, strategy and threshold set."""
    torch.manual_seed(0)
    model = build_saom(ModelConfig.preset(name, num_classes=len(SAOM_CLASSES)), SAOM_CLASSES)
    engine = EverythingEngine(model.eval(), EverythingSettings(
        points_per_batch=args.points_per_batch, cuda_dtype=args.cuda_dtype,
        compile=args.compile), device, token_graphs=not args.no_token_graphs)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for w, h in sizes:
        image = synthetic_scene(h, w, seed=7)[0]
        for strategy in PROMPT_STRATEGIES:
            for label, (iou, stab) in THRESHOLDS.items():
                s = engine.settings
                engine.settings = EverythingSettings(
                    points_per_side=32, points_per_batch=s.points_per_batch,
                    pred_iou_thresh=iou, stability_score_thresh=stab,
                    cuda_dtype=s.cuda_dtype, compile=s.compile, prompt_strategy=strategy)
                count = args.stream_frames if strategy == "streaming" else args.runs
                frames = _frames(image, count + 1) if strategy == "streaming" else \
                    [image] * (count + 1)
                _time_frames(engine, frames[:1], sync)  # warm-up (and compilation)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                median, n = _time_frames(engine, frames, sync)
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" \
                    else float("nan")
                print(f"| {name} | {w}x{h} | {strategy} | {label} | {median * 1e3:.1f} | "
                       f"{n} | {peak:.2f} |", flush=True)
    del engine, model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=choice_list(list(PRESETS)), default="vit_b,vit_h")
    p.add_argument("--sizes", type=frame_sizes, default="640x480,1280x720", help="WxH,...")
    p.add_argument("--runs", type=positive_int, default=5, help="timed frames, grid and hierarchical")
    p.add_argument("--stream-frames", type=positive_int, default=20, help="timed frames, streaming")
    p.add_argument("--points-per-batch", type=int, default=0, help="0: the engine's choice")
    p.add_argument("--cuda-dtype", default="bfloat16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-token-graphs", action="store_true",
                   help="launch the decoder's token stage op by op instead of from CUDA graphs")
    p.add_argument("--device", type=torch_device,
                   default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name} torch={torch.__version__} dtype={args.cuda_dtype} "
          f"compile={args.compile} token_graphs={not args.no_token_graphs} grid=32^2 "
          f"batch={args.points_per_batch}")
    print("| model | frame | strategy | thresholds | median ms | instances | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        run_model(model, args.sizes, args, device)


if __name__ == "__main__":
    main()
