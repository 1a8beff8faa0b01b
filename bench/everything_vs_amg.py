"""Benchmark: EverythingEngine vs segment_anything's SamAutomaticMaskGenerator.

Same model, image and settings (no crops), one process; the two take turns, run by run, and the
median of each is printed, last ``speedup=<engine vs AMG, x> parity_iou=<min matched IoU>``.

Without real SAM weights, the tiny model gets a few hundred quick training steps on synthetic
shapes (``fit_shapes``, through segment_anything's own decoder) so that its masks are shapes
rather than noise; larger models use random
weights (timing only) unless --checkpoint is given. The generator runs with its default
points_per_batch (64).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from saom_ros.classes import SAOM_CLASSES
from saom_ros.everything import EverythingEngine, EverythingSettings, make_point_grid
from saom_ros.everything_settings import settings_for
from saom_ros.malloc_settings import keep_freed_memory
from saom_ros.model import ModelConfig, Saom, build_saom

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests load this file by its path
from bench_args import load_checkpoint, positive_int, torch_device  # noqa: E402


def synthetic_scene(h: int, w: int, seed: int, n_shapes: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image of coloured rectangles and ellipses on a flat background, and its id map."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(20, 60, 3)
    ids = np.zeros((h, w), np.int64)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, n_shapes + 1):
        ch, cw = rng.integers(h // 10, h // 4), rng.integers(w // 10, w // 4)
        y0, x0 = rng.integers(0, h - ch), rng.integers(0, w - cw)
        if rng.random() < 0.5:
            m = (yy >= y0) & (yy < y0 + ch) & (xx >= x0) & (xx < x0 + cw)
        else:
            m = ((yy - y0 - ch / 2) / (ch / 2)) ** 2 + ((xx - x0 - cw / 2) / (cw / 2)) ** 2 < 1
        img[m] = rng.integers(70, 256, 3)
        ids[m] = k
    return img, ids


def _mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask BCE + dice, [P, M]."""
    t = target[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean((-1, -2))
    p = logits.sigmoid()
    dice = 1 - (2 * (p * t).sum((-1, -2)) + 1) / (p.sum((-1, -2)) + t.sum((-1, -2)) + 1)
    return bce + dice


def _trunk_features(model: Saom, image: np.ndarray) -> torch.Tensor:
    """Image-encoder features before its neck (the frozen part of the quick fit)."""
    enc = model.sam.image_encoder
    with torch.no_grad():
        x = enc.patch_embed(model.preprocess(image)[0])
        x = x + enc.pos_embed if enc.pos_embed is not None else x
        for blk in enc.blocks:
            x = blk(x)
    return x.permute(0, 3, 1, 2)


def fit_shapes(model: Saom, steps: int, n_images: int = 4, n_prompts: int = 16,
               seed: int = 0) -> Saom:
    """Deterministic quick training on synthetic shapes; returns the model in eval mode.

    The encoder's transformer blocks stay frozen (their features are computed once); its neck,
    the prompt encoder and the decoder learn. Prompts are everything-grid points, mostly on
    shapes; the loss takes the best of the 3 masks, and the IoU head learns the masks' true IoU
    so that the predicted-IoU filter means something.
    """
    threads = torch.get_num_threads()
    # The steps are many tiny ops: one thread avoids OpenMP spin-waits, which made them ~8x
    # slower on a busy 2-core machine.
    torch.set_num_threads(1)
    try:
        return _fit(model, steps, n_images, n_prompts, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(model: Saom, steps: int, n_images: int, n_prompts: int, seed: int) -> Saom:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    size = model.config.img_size
    scenes = [synthetic_scene(size, size, seed + i) for i in range(n_images)]
    feats = [_trunk_features(model, im) for im, _ in scenes]
    grid = torch.as_tensor(make_point_grid(32) * size, dtype=torch.float32)
    params = [p for n, p in model.named_parameters()
              if not n.startswith("sam.image_encoder") or ".neck." in n]
    opt = torch.optim.Adam(params, lr=2e-3)
    model.train()
    for step in range(steps):
        ids = torch.as_tensor(scenes[step % n_images][1])
        on_grid = ids[grid[:, 1].long(), grid[:, 0].long()]
        weight = torch.where(on_grid > 0, 1.0, 0.15)  # background is most of the grid
        pts = grid[torch.multinomial(weight, n_prompts, generator=g)]
        tgt = ids[pts[:, 1].long(), pts[:, 0].long()]
        low = F.avg_pool2d((ids[None] == tgt[:, None, None]).float()[:, None], 4)[:, 0]
        emb = model.sam.image_encoder.neck(feats[step % n_images])
        logits, iou_pred = _sam_decode(model, emb, pts[:, None])
        with torch.no_grad():
            b, tb = logits > 0, low[:, None] > 0.5
            true_iou = (b & tb).sum((-1, -2)) / (b | tb).sum((-1, -2)).clamp(min=1)
        loss = (_mask_loss(logits, low).min(1).values.mean()
                + F.mse_loss(iou_pred, true_iou.float()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _sam_decode(model: Saom, embedding: torch.Tensor, points: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """segment_anything's own decoder on point prompts [B, 1, 2]: the three masks' low-res
    logits and predicted IoUs. The fit uses it rather than our fast decoder, whose arithmetic
    differs in rounding: a few hundred steps amplify that into another model."""
    sam = model.sam
    sparse, dense = sam.prompt_encoder(
        points=(points, torch.ones(len(points), 1, dtype=torch.int)), boxes=None, masks=None)
    return sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)


def _alternating(fns: dict[str, Callable[[], object]], runs: int,
                 sync: Callable[[], None]) -> dict[str, tuple[float, object]]:
    """For each of ``fns``: the median wall time of ``runs`` calls after one warm-up call, and
    the last result. The functions take turns, so that a machine whose speed drifts (shared
    cores, memory bandwidth) slows them alike and their ratio stays fair."""
    out = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            out[name] = fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(times[name]), out[name]) for name in fns}


def matched_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Min over the masks of the smaller set of the best IoU with a mask of the other set."""
    if len(a) > len(b):
        a, b = b, a
    if len(a) == 0:
        return 1.0 if len(b) == 0 else 0.0
    fa, fb = (torch.as_tensor(m).flatten(1).float() for m in (a, b))
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), 1.0)  # two empty masks match
    return float(iou.max(1).values.min())


def amg_masks(model: Saom, s: EverythingSettings, image: np.ndarray,
              points_per_batch: int = 64) -> np.ndarray:
    """SamAutomaticMaskGenerator's masks [N, H, W] for ``image`` with the same settings."""
    from segment_anything import SamAutomaticMaskGenerator
    records = SamAutomaticMaskGenerator(
        model.sam, points_per_side=s.points_per_side, points_per_batch=points_per_batch,
        pred_iou_thresh=s.pred_iou_thresh, stability_score_thresh=s.stability_score_thresh,
        stability_score_offset=s.stability_score_offset, box_nms_thresh=s.box_nms_thresh,
        min_mask_region_area=s.min_mask_region_area, output_mode="binary_mask").generate(image)
    if not records:
        return np.zeros((0,) + image.shape[:2], bool)
    return np.stack([r["segmentation"] for r in records])


def _built_model(args: argparse.Namespace) -> Saom:
    """``args.model`` with random weights, its decoder fitted to shapes for ``args.fit_steps``."""
    torch.manual_seed(0)
    model = build_saom(ModelConfig.preset(args.model, num_classes=len(SAOM_CLASSES)), SAOM_CLASSES)
    if args.fit_steps > 0:
        t = time.perf_counter()
        fit_shapes(model, args.fit_steps)
        print(f"fit_shapes: {args.fit_steps} steps in {time.perf_counter() - t:.1f} s")
    return model.eval()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    p.add_argument("--checkpoint", help="SAOM or sam_vit_*.pth file instead of a built model")
    p.add_argument("--carried-settings", action="store_true",
                   help="the everything settings the checkpoint carries (as the node uses them) "
                        "instead of --points-per-side and the thresholds")
    p.add_argument("--fit-steps", type=int, default=None,
                   help="quick decoder training steps (default: 300 for tiny, else 0)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--points-per-batch", type=int, default=None,
                   help="engine batch (default: the engine's on the CPU, 1024 on CUDA); AMG "
                        "uses 64")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-thresh", type=float, default=0.95)
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument("--device", type=torch_device,
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cuda-dtype", default="bfloat16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-amg", action="store_true", help="time the engine only")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc keeps freed memory for both, as the node sets it "
                        "(saom_ros.malloc_settings)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for both (default: torch's; 1 is steadier on a "
                        "busy machine)")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, 256 px, loose thresholds, 5 runs (< 60 s on 2 CPU cores)")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.height, args.width, args.runs = "tiny", 256, 256, 5
        args.pred_iou_thresh, args.stability_thresh = 0.25, 0.5
    if args.fit_steps is None:
        args.fit_steps = 300 if args.model == "tiny" and not args.checkpoint else 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and not keep_freed_memory():
        raise SystemExit("--keep-freed-memory needs glibc's mallopt")
    device = torch.device(args.device)
    model = (load_checkpoint(p, args.checkpoint) if args.checkpoint
             else _built_model(args)).to(device)
    runtime = dict(points_per_batch=args.points_per_batch or (1024 if device.type == "cuda" else 0),
                   cuda_dtype=args.cuda_dtype, compile=args.compile)
    settings = settings_for(model, **runtime) if args.carried_settings else EverythingSettings(
        points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh, **runtime)
    image = synthetic_scene(args.height, args.width, seed=7)[0]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    engine = EverythingEngine(model, settings, device)
    fns: dict[str, Callable[[], object]] = {"engine": lambda: engine(image)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        engine(image)
        peak = torch.cuda.max_memory_allocated()
    if not args.no_amg:
        fns["amg"] = lambda: amg_masks(model, settings, image)
    timed = _alternating(fns, args.runs, sync)
    t_eng, inst = timed["engine"]
    print(f"device={device} threads={torch.get_num_threads()} model={args.model} "
          f"image={args.height}x{args.width} "
          f"grid={settings.points_per_side}^2 batch={settings.points_per_batch} "
          f"pred_iou_thresh={settings.pred_iou_thresh} stability={settings.stability_score_thresh} "
          f"keep_freed_memory={args.keep_freed_memory}")
    print(f"engine: median {t_eng * 1e3:.1f} ms over {args.runs} runs, {len(inst)} masks")
    if device.type == "cuda":
        print(f"engine peak GPU memory: {peak / 2**20:.0f} MiB")
    if args.no_amg:
        print("speedup=nan parity_iou=nan")
        return
    t_amg, ref = timed["amg"]
    print(f"SamAutomaticMaskGenerator: median {t_amg * 1e3:.1f} ms, {len(ref)} masks "
          "(runs alternating with the engine's)")
    print(f"speedup={t_amg / t_eng:.2f} parity_iou={matched_iou(inst.masks, ref):.4f}")

if __name__ == "__main__":
    main()
