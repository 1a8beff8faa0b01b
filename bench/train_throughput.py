"""Training throughput (images/s) without and with the on-disk embedding cache.

Trains on a synthetic dataset (saom-train synth scenes) with the frozen encoder: first with the
cache off (every step runs the image encoder), then, after one epoch has filled the cache, with
every embedding read from disk. Both runs train the same steps on the same images in the same
process; the numbers are medians of the per-step images/s the trainer logs (warm-up steps left
out). The last line reads ``cached_speedup=<x>``.

    python bench/train_throughput.py                                  # tiny model, CPU
    python bench/train_throughput.py --model-type vit_b --device cuda  # vit_b on a GPU
"""
from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

import torch

from bench_args import positive_int, torch_device
from saom_ros.model_config import PRESETS
from saom_ros.training.config import load_config
from saom_ros.training.finetune import train
from saom_ros.training.synthetic import write_dataset


def measure(data: Path, run_dir: Path, args: argparse.Namespace, cache: str | bool,
            steps: int) -> float:
    """Median images/s over ``steps`` logged steps after ``args.warmup`` unlogged ones."""
    cfg = load_config(None, [
        f"data.train={data / 'annotations.json'}", f"train.run_dir={run_dir}",
        f"model.model_type={args.model_type}", f"train.device={args.device}",
        f"train.batch_size={args.batch_size}", "train.log_every=1", "train.checkpoint_every=100000",
        f"train.max_steps={args.warmup + steps}", f"train.embedding_cache={cache}",
        f"data.num_workers={args.num_workers}", f"assignment.points_per_side={args.points_per_side}",
        f"train.amp={args.device == 'cuda'}"])
    train(cfg, progress=False)
    with open(run_dir / "metrics.csv") as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f)][args.warmup:]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-type", default="tiny", choices=list(PRESETS))
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--images", type=positive_int, default=8, help="dataset size (one epoch fills the cache)")
    p.add_argument("--size", type=int, default=256, help="synthetic image side")
    p.add_argument("--steps", type=positive_int, default=8, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = p.parse_args()
    if args.images < args.batch_size:
        p.error("--images must be at least --batch-size")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data = write_dataset(work / "data", args.images, seed=0, size=args.size)
        cache = work / "embedding_cache"
        print(f"model={args.model_type} device={args.device} torch={torch.__version__} "
              f"threads={torch.get_num_threads()} images={args.images} size={args.size} "
              f"batch={args.batch_size} steps={args.steps} (+{args.warmup} warm-up)")
        uncached = measure(data, work / "uncached", args, False, args.steps)
        print(f"uncached_images_per_s={uncached:.3f}")
        # fill the cache: one full epoch touches every image once
        fill = argparse.Namespace(**{**vars(args), "warmup": 0})
        measure(data, work / "fill", fill, str(cache), args.images // args.batch_size)
        cached = measure(data, work / "cached", args, str(cache), args.steps)
        print(f"cached_images_per_s={cached:.3f}")
        print(f"cached_speedup={cached / uncached:.2f}")


if __name__ == "__main__":
    main()
