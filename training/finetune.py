"""SAOM fine-tuning (`saom-train train`): frozen encoder, grid-point prompts, DDP, exact resume.

One optimizer step sees ``world_size * batch_size * grad_accum`` images; every image brings all of
its masks (up to ``max_prompts_per_image``) as one prompt batch, each prompted with its assigned
grid point. Images without a trainable mask are left out (data_order.trainable_images). All data
randomness (order, prompt sub-sampling, random prompts) is derived from (seed, epoch, image
index), so a run resumed from a checkpoint sees exactly the data an unbroken run would, with the
same number of processes: the checkpoint records it, and a resume with another is refused (the
global batch, the schedule's length and the data position would all change).
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from saom_ros.atomic import remove_temp_files
from saom_ros.classes import AGNOSTIC_CLASSES
from saom_ros.model import ModelConfig, Saom, build_saom, load_model
from saom_ros.training.config import check_device, validate_config
from saom_ros.training.data_order import DataOrder, trainable_images
from saom_ros.training.datasets import open_dataset
from saom_ros.training.distributed import init_distributed, resolve_device
from saom_ros.training.embedding_cache import EmbeddingCache, encoder_fingerprint
from saom_ros.training.process_lifetime import StopRequest, catch_stop_signals
from saom_ros.training.run_dir import clear_run, has_run, readable_checkpoint, warn
from saom_ros.training.run_logs import RunLogs, mean_over_processes
from saom_ros.training.train_state import (
    STATE_FORMAT, atomic_torch_save, config_diff, layout_diff, load_train_state, rng_state,
    set_rng_state)
from saom_ros.training.train_step import Prepared, TrainStep


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a finished step; ``checkpoint`` holds that step."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[Path], main: bool) -> None:
        self.signum, self.step, self.checkpoint, self.main = signum, step, checkpoint, main
        where = (f"checkpoint: {checkpoint}" if checkpoint is not None
                 else "no step finished, nothing new saved")
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {where}; "
                         "to continue, run the same command with --resume")


def cosine_schedule(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier: linear warm-up, then cosine from 1 to ``min_ratio`` at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    return factor


# ----------------------------------------------------------------------------- model set-up
def _class_names(dataset, cfg: dict) -> tuple[str, ...]:
    return AGNOSTIC_CLASSES if cfg["model"]["class_agnostic"] else tuple(dataset.class_names)


def init_model(cfg: dict, class_names: Sequence[str]) -> Saom:
    """Start from ``model.init`` (official SAM or SAOM file, architecture detected) or a random
    ``model.model_type``.

    A class head is kept only when the checkpoint's class list equals ``class_names``.
    """
    mc = cfg["model"]
    agnostic = bool(mc["class_agnostic"])
    num_classes = 0 if agnostic else len(class_names)
    names = None if agnostic else tuple(class_names)
    if mc["init"] is None:
        return build_saom(ModelConfig.preset(mc["model_type"], num_classes), names)
    loaded = load_model(mc["init"])  # the architecture comes from the file
    if loaded.config.num_classes == num_classes and (agnostic or loaded.class_names == names):
        return loaded.train()
    model = build_saom(dataclasses.replace(loaded.config, num_classes=num_classes), names)
    model.sam.load_state_dict(loaded.sam.state_dict())
    return model


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Holds the run: model, optimizer, schedule, data order, cache, logs and checkpoints."""

    def __init__(self, cfg: dict, progress: bool = True) -> None:
        self.cfg = cfg
        tc = cfg["train"]
        validate_config(cfg)
        check_device(tc["device"])
        if cfg["data"]["train"] is None:
            raise ValueError("data.train is not set: give a COCO or SAOM-layout dataset")
        self.device = resolve_device(tc["device"], int(os.environ.get("LOCAL_RANK", 0)))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # nccl uses the current device
        self.dist = init_distributed(self.device.type)
        self.run_dir = Path(tc["run_dir"])
        self.progress = progress and self.dist.main
        seed = int(tc["seed"])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

        self.dataset = open_dataset(cfg["data"]["train"], cfg["data"]["split"])
        self.model = init_model(cfg, _class_names(self.dataset, cfg)).to(self.device)
        self.frozen = bool(cfg["model"]["freeze_encoder"])
        self.model.sam.image_encoder.requires_grad_(not self.frozen)
        if self.frozen and not cfg["model"]["init"] and self.dist.main:
            warn("no --init (model.init): the frozen image encoder keeps its random weights; "
                 "start from sam_vit_*.pth or a SAOM checkpoint (the SAOM recipe), or set "
                 "model.freeze_encoder=false to train the encoder too")
        self.step_module = TrainStep(self.model, cfg).to(self.device)
        params = [p for p in self.step_module.parameters() if p.requires_grad]
        oc = cfg["optim"]
        self.optimizer = torch.optim.AdamW(params, lr=float(oc["lr"]), betas=tuple(oc["betas"]),
                                           weight_decay=float(oc["weight_decay"]))
        self.batch = int(tc["batch_size"])
        self.accum = int(tc["grad_accum"])
        grid = self.model.config.img_size // self.model.config.patch_size
        images = trainable_images(self.dataset, cfg, self.model.config.img_size, grid, self.dist,
                                  self.device)
        dropped = len(self.dataset) - len(images)
        if dropped and self.dist.main:
            warn(f"{dropped} of {len(self.dataset)} images have no mask to train on (no instance, "
                 f"or every mask vanishes on the {grid}x{grid} embedding grid at "
                 f"assignment.min_coverage): left out of training")
        self.data = DataOrder(self.dataset, images, self.dist, self.batch, self.accum, seed,
                              int(cfg["data"]["num_workers"]))
        self.steps_per_epoch = self.data.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(images)} trainable images are fewer than one global batch "
                             f"({self.dist.world} x {self.batch} x {self.accum})")
        self.total_steps = int(tc["max_steps"] or int(tc["epochs"]) * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_schedule(self.total_steps, int(oc["warmup_steps"]),
                                            float(oc["min_lr_ratio"])))
        self.amp = bool(tc["amp"]) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.cache_dtype = getattr(torch, tc["cache_dtype"])
        self.cache = None
        if self.frozen and tc["embedding_cache"]:
            root = (self.run_dir / "embedding_cache" if tc["embedding_cache"] is True
                    else Path(tc["embedding_cache"]))
            self.cache = EmbeddingCache(root, encoder_fingerprint(self.model, self.cache_dtype))
        self.step = 0
        self.ddp = (DistributedDataParallel(self.step_module, find_unused_parameters=True,
                                            device_ids=[self.device.index]
                                            if self.device.type == "cuda" else None)
                    if self.dist.world > 1 else self.step_module)
        self.logs: Optional[RunLogs] = None  # the main process's, while fit runs
        self.stop_request = StopRequest()  # never fires unless train() installs the handlers

    # -- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "format_version": 1, "config": self.cfg,
                "model_config": {**dataclasses.asdict(self.model.config),
                                 "encoder_global_attn_indexes":
                                     list(self.model.config.encoder_global_attn_indexes)},
                "class_names": list(self.model.class_names),
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "rng": rng_state(),
                "layout": self.layout()}

    def layout(self) -> dict:
        """What the global batch, the schedule and the data position depend on beyond the
        config: a resume must find the same."""
        return {"world_size": self.dist.world, "images": len(self.data.images),
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps}

    def save(self) -> Path:
        """step_<N>.pt (atomic) and last.pt (a hard link to it); prune old step files."""
        path = self.checkpoint_dir / f"step_{self.step:08d}.pt"
        atomic_torch_save(self.state_dict(), path)
        tmp = self.checkpoint_dir / ".last.pt.link"
        if tmp.exists():
            tmp.unlink()
        os.link(path, tmp)
        os.replace(tmp, self.checkpoint_dir / "last.pt")
        keep = int(self.cfg["train"]["keep_checkpoints"])
        # files of later steps (left by a resume from an older, readable checkpoint) are not
        # older: they must not push this one out
        older = sorted(p for p in self.checkpoint_dir.glob("step_*.pt") if p.name <= path.name)
        for old in older[:-keep] if keep > 0 else []:
            old.unlink()
        remove_temp_files(self.checkpoint_dir)  # of writes killed before this run resumed
        return path

    def load(self, path: Path, state: Optional[dict] = None) -> None:
        """Continue from the checkpoint at ``path`` (``state``: its content, already read)."""
        state = load_train_state(path) if state is None else state
        diff = config_diff(state["config"], self.cfg)
        if diff:
            raise ValueError(f"cannot resume from {path}: the config differs: {'; '.join(diff)}")
        diff = layout_diff(state.get("layout"), self.layout())
        if diff:
            raise ValueError(f"cannot resume from {path}: {'; '.join(diff)}")
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # another set of trained parameters: an earlier version's run
            raise ValueError(f"cannot resume from {path}: its optimizer trained other parameters "
                             f"than this version trains ({err}); export it and start a new run "
                             f"with --init") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        set_rng_state(state["rng"])

    # -- data
    def prepare(self, epoch: int, batch: list) -> list[Prepared]:
        items = []
        for index, sample in batch:
            masks = torch.as_tensor(np.ascontiguousarray(sample.masks), dtype=torch.bool,
                                    device=self.device)
            items.append(Prepared(index, epoch, tuple(sample.image.shape[:2]), masks,
                                  torch.as_tensor(np.asarray(sample.class_ids), dtype=torch.int64,
                                                  device=self.device)))
        if self.frozen:
            for item, (_, sample) in zip(items, batch):
                item.embedding = self.embedding(sample.image)
        else:
            for item, (_, sample) in zip(items, batch):
                item.image = self.model.preprocess(sample.image)[0]
        return items

    @torch.no_grad()
    def embedding(self, image: np.ndarray) -> torch.Tensor:
        """Frozen-encoder embedding in cache precision (the same whether cached or not)."""
        key = self.cache.key(image) if self.cache is not None else None
        emb = self.cache.get(key) if self.cache is not None else None
        if emb is None:
            with self.autocast():
                emb = self.model.embed(self.model.preprocess(image)[0]).to(self.cache_dtype)
            if self.cache is not None:
                self.cache.put(key, emb)
        return emb.to(self.device).float()

    def autocast(self):
        """float16 autocast on CUDA when train.amp is on; nothing otherwise."""
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    # -- logging
    def log(self, epoch: int, lr: float, stats: dict[str, float], images_per_s: float) -> None:
        """A metrics.csv row: the losses are means per image, ``prompts`` the prompts the whole
        optimizer step trained (summed over micro-batches and processes)."""
        means = mean_over_processes(stats, self.dist.world)
        if self.dist.main:
            self.logs.write(self.step, epoch, lr, means, images_per_s)

    # -- the loop
    def stop_signal(self) -> int:
        """The stop signal any process received (0: none); every rank gets the same answer."""
        if self.dist.world == 1:
            return self.stop_request.signum
        flag = torch.tensor([self.stop_request.signum], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def fit(self, stop_after: Optional[int] = None) -> Path:
        """Train to ``total_steps`` (or ``stop_after`` more steps, or to the step that finishes
        when a stop signal comes); returns the last checkpoint."""
        tc = self.cfg["train"]
        if self.dist.main:
            self.logs = RunLogs(self.run_dir, self.cfg, self.step)
        end = self.total_steps if stop_after is None else min(self.total_steps,
                                                               self.step + stop_after)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                   desc="train", unit="step")
        acc: dict[str, float] = {}
        micro, t0, images, last = 0, time.perf_counter(), 0, None
        self.step_module.train()
        batches = self.data.micro_batches(self.step)
        while self.step < end:
            epoch, batch = next(batches)
            items = self.prepare(epoch, batch)
            sync = (micro + 1) % self.accum == 0
            ctx = self.ddp.no_sync() if (self.dist.world > 1 and not sync) else nullcontext()
            with ctx:
                with self.autocast():
                    loss, stats = self.ddp(items)
                self.scaler.scale(loss / self.accum).backward()
            for k, v in stats.items():
                acc[k] = acc.get(k, 0.0) + (v if k == "prompts" else v / self.accum)
            micro += 1
            images += len(items)
            if not sync:
                continue
            if float(self.cfg["optim"]["grad_clip"]) > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_([p for p in self.step_module.parameters()
                                          if p.requires_grad], float(self.cfg["optim"]["grad_clip"]))
            lr = self.scheduler.get_last_lr()[0]  # the rate this step used
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            signum = self.stop_signal()
            if signum:  # this step is the last: logged and checkpointed like the end
                end = self.step
            bar.update(1)
            bar.set_postfix(loss=f"{acc.get('loss', 0.0):.4f}")
            if self.step % int(tc["log_every"]) == 0 or self.step == end:
                elapsed = time.perf_counter() - t0
                self.log(epoch, lr, acc, images * self.dist.world / max(elapsed, 1e-9))
                t0, images = time.perf_counter(), 0
            acc = {}
            if self.step % int(tc["checkpoint_every"]) == 0 or self.step == end:
                if self.dist.main:
                    last = self.save()
                if self.dist.world > 1:
                    dist.barrier()
        bar.close()
        if self.logs is not None:
            self.logs.close()
        return last if last is not None else self.checkpoint_dir / "last.pt"

    def fit_until_stopped(self, stop_after: Optional[int]) -> Path:
        """fit, or TrainingInterrupted when a stop signal came (before or during it)."""
        start = self.step
        last = None if self.stop_signal() else self.fit(stop_after)
        signum = self.stop_signal()
        if signum and self.step < self.total_steps:  # finished anyway: nothing to resume
            saved = last if last is not None and self.step > start else None
            raise TrainingInterrupted(signum, self.step, saved, self.dist.main)
        return last


# ----------------------------------------------------------------------------- entry point
def train(cfg: dict, resume: bool = False, stop_after: Optional[int] = None,
          progress: bool = True, overwrite: bool = False) -> Path:
    """Run a training job: a new one in an empty run dir (``overwrite``: removing the run that is
    there), or, with ``resume``, continue from the newest readable checkpoint in it.

    SIGINT/SIGTERM finish the current step, checkpoint and raise TrainingInterrupted.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if stop_after is not None and (not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"--stop-after must be a positive number of steps, not {stop_after!r}")
    # Logs go to TensorBoard (RunLogs): without tensorboard, fail (ImportError) before any
    # run dir is cleared, data read or embedding cached.
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    run_dir = Path(cfg["train"]["run_dir"])
    if not resume and not overwrite and has_run(run_dir):
        raise ValueError(f"run dir {run_dir} already holds a run: pass --resume to continue it "
                         "or --overwrite to replace it (or choose another --run-dir)")
    with catch_stop_signals() as stop_request:
        trainer = Trainer(cfg, progress=progress)
        trainer.stop_request = stop_request
        try:
            if trainer.dist.main:  # the others only read: they wait at the barrier below
                if overwrite:
                    clear_run(run_dir)
                if resume:  # a kill mid-write left temp files; nothing writes now
                    for folder in (trainer.run_dir, trainer.checkpoint_dir):
                        remove_temp_files(folder)
            if trainer.dist.world > 1:
                dist.barrier()
            found = readable_checkpoint(trainer.checkpoint_dir, trainer.dist.main) if resume else None
            if found is not None:
                trainer.load(*found)
            return trainer.fit_until_stopped(stop_after)
        finally:
            if trainer.dist.world > 1 and dist.is_initialized():
                dist.destroy_process_group()
