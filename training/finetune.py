"""SAOM fine-tuning (`saom-train train`): frozen encoder, grid-point prompts, DDP, exact resume.

One optimizer step sees ``world_size * batch_size * grad_accum`` images; every image brings all of
its masks (up to ``max_prompts_per_image``) as one prompt batch, each prompted with its assigned
grid point. All data randomness (order, prompt sub-sampling, random prompts) is derived from
(seed, epoch, image index), so a run resumed from a checkpoint sees exactly the data an unbroken
run would, on any number of processes.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from saom_ros.atomic import atomic_open, atomic_write_text, remove_temp_files
from saom_ros.classes import AGNOSTIC_CLASSES
from saom_ros.everything import carried_settings, settings_for
from saom_ros.model import ModelConfig, Saom, build_saom, load_model, save_checkpoint
from saom_ros.training.assignment import (
    Assignment, add_interior_points, assign_nearest, assign_random, mask_coverage, resized_hw,
    to_model_frame)
from saom_ros.training.datasets import CocoInstances, DatasetError, SaomMetadataDataset
from saom_ros.training.losses import LossWeights, mask_losses
from saom_ros.training.process_lifetime import dataloader_worker_init

STATE_FORMAT = "saom-train-state"
# Keys that may differ between a run and its resumption (they do not change the result).
_RESUME_FREE_KEYS = {("train", "run_dir"), ("data", "num_workers"), ("train", "log_every"),
                     ("train", "checkpoint_every"), ("train", "keep_checkpoints")}
_CSV_FIELDS = ("step", "epoch", "lr", "loss", "dice", "focal", "ce", "iou", "prompts",
               "images_per_s")


# ----------------------------------------------------------------------------- configuration
def default_config_path() -> Path:
    """config/train.yaml of a source/develop tree, else the installed share/saom_ros copy."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / "train.yaml",
                  Path(sys.prefix) / "share" / "saom_ros" / "config" / "train.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"config/train.yaml not found (looked at {', '.join(map(str, candidates))})")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    return data


def _merge(base: dict, update: dict, where: str) -> dict:
    """``base`` with ``update``'s values; keys unknown to ``base`` are errors (typos fail loudly)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise ValueError(f"unknown config key {name!r}; known: {', '.join(map(str, base))}")
        if isinstance(base[key], dict) and key != "everything":
            if not isinstance(value, dict):
                raise ValueError(f"config key {name!r} is a section; got {value!r}")
            out[key] = _merge(base[key], value, name)
        elif isinstance(base[key], dict):  # free-form section (EverythingSettings overrides)
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


_CHOICES = {("assignment", "prompt_mode"): ("nearest", "random", "multi"),
            ("loss", "mask_selection"): ("best_gt_iou", "max_pred_iou"),
            ("train", "cache_dtype"): ("float16", "bfloat16", "float32")}
_POSITIVE_INTS = (("train", "batch_size"), ("train", "grad_accum"), ("train", "log_every"),
                  ("train", "checkpoint_every"), ("assignment", "points_per_side"),
                  ("assignment", "points_per_mask"), ("data", "max_prompts_per_image"))


def validate_config(cfg: dict) -> None:
    """ValueError naming the key for values that would only fail deep inside a run."""
    for (section, key), choices in _CHOICES.items():
        if cfg[section][key] not in choices:
            raise ValueError(f"{section}.{key} must be one of {', '.join(choices)}, "
                             f"not {cfg[section][key]!r}")
    for section, key in _POSITIVE_INTS:
        value = cfg[section][key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{section}.{key} must be a positive integer, not {value!r}")


def parse_override(text: str) -> dict:
    """``section.key=value`` (value parsed as YAML) -> nested dict."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    node: Any = yaml.safe_load(value) if value else None
    for part in reversed(key.strip().split(".")):
        node = {part: node}
    return node


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str | dict] = ()
                ) -> dict:
    """The defaults of config/train.yaml, then the file at ``path``, then each override."""
    cfg = _read_yaml(default_config_path())
    if path is not None:
        cfg = _merge(cfg, _read_yaml(Path(path)), "")
    for item in overrides:
        cfg = _merge(cfg, parse_override(item) if isinstance(item, str) else item, "")
    return cfg


# ----------------------------------------------------------------------------- small helpers
def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` atomically (never a torn checkpoint)."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one image in one epoch (independent of process count and resume)."""
    return np.random.default_rng([seed, epoch, index])


def cosine_schedule(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier: linear warm-up, then cosine from 1 to ``min_ratio`` at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    return factor


def open_dataset(path: str | os.PathLike, split: str = "train"):
    """A COCO file or a SAOM-layout metadata file (``split`` picks its list) as a dataset."""
    path = Path(path)
    try:
        with open(path) as f:
            keys = json.load(f).keys()
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise DatasetError(f"dataset file {path} is not a JSON object: {err}") from None
    if "entity classes" in keys:
        return SaomMetadataDataset(path, split)
    return CocoInstances(path)


# ----------------------------------------------------------------------------- embedding cache
def encoder_fingerprint(model: Saom, dtype: torch.dtype) -> str:
    """Hash of everything that determines an image embedding: encoder weights, normalisation."""
    h = hashlib.sha1()
    h.update(f"{model.config.img_size}|{dtype}".encode())
    state = {**model.sam.image_encoder.state_dict(),
             "pixel_mean": model.sam.pixel_mean, "pixel_std": model.sam.pixel_std}
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class EmbeddingCache:
    """Image embeddings on disk, one file per image, keyed by image content + encoder hash."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = Path(root) / fingerprint
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(image: np.ndarray) -> str:
        return hashlib.sha1(str(image.shape).encode() + image.tobytes()).hexdigest()

    def get(self, key: str) -> Optional[torch.Tensor]:
        path = self.root / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a foreign or damaged file: recompute rather than fail the run
            return None

    def put(self, key: str, embedding: torch.Tensor) -> None:
        atomic_torch_save(embedding.detach().cpu().clone(), self.root / f"{key}.pt")


# ----------------------------------------------------------------------------- the model step
@dataclasses.dataclass
class Prepared:
    """One training image on the device: embedding (frozen encoder) or input image, and targets."""

    index: int
    epoch: int
    image_hw: tuple[int, int]
    masks: torch.Tensor  # bool [N, H, W]
    class_ids: torch.Tensor  # int64 [N]
    image: Optional[torch.Tensor] = None  # [1, 3, S, S] when the encoder trains
    embedding: Optional[torch.Tensor] = None  # [1, C, h, w] when it is frozen


class TrainStep(nn.Module):
    """Forward = the loss of one micro-batch, so DDP sees one forward per backward."""

    def __init__(self, model: Saom, cfg: dict) -> None:
        super().__init__()
        self.model = model
        self.seed = int(cfg["train"]["seed"])
        self.assign_cfg = cfg["assignment"]
        self.max_prompts = int(cfg["data"]["max_prompts_per_image"])
        lc = cfg["loss"]
        self.weights = LossWeights(dice=lc["dice"], focal=lc["focal"], ce=lc["ce"], iou=lc["iou"],
                                   focal_alpha=lc["focal_alpha"], focal_gamma=lc["focal_gamma"])
        self.selection = lc["mask_selection"]
        self.per_object = bool(lc["per_object"])

    def assign(self, item: Prepared, embedding: torch.Tensor) -> Assignment:
        rng = sample_rng(self.seed, item.epoch, item.index)
        mode = self.assign_cfg["prompt_mode"]
        pps = int(self.assign_cfg["points_per_side"])
        if mode in ("nearest", "multi"):
            a = assign_nearest(embedding[0].detach(), item.masks, self.model.config.img_size,
                               pps, float(self.assign_cfg["min_coverage"]))
            if mode == "multi":
                a = add_interior_points(a, item.masks, pps,
                                        int(self.assign_cfg["points_per_mask"]), rng)
        elif mode == "random":
            a = assign_random(item.masks, rng)
        else:
            raise ValueError(f"assignment.prompt_mode must be nearest, random or multi, "
                             f"not {mode!r}")
        if len(a.keep) > self.max_prompts:
            pick = np.sort(rng.choice(len(a.keep), self.max_prompts, replace=False))
            a = Assignment(a.keep[pick], a.points[pick], a.grid_index[pick])
        return a

    def image_loss(self, item: Prepared, embedding: torch.Tensor) -> Optional[dict]:
        a = self.assign(item, embedding)
        if len(a.keep) == 0:
            return None
        size = self.model.config.img_size
        keep = torch.as_tensor(a.keep, device=item.masks.device)
        coords = torch.as_tensor(to_model_frame(a.points, item.image_hw, size),
                                 dtype=torch.float32, device=embedding.device)[:, None]
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=embedding.device)
        out = self.model.decode(embedding, coords, labels, multimask=True)
        low = out.low_res_logits.shape[-1]
        rh, rw = resized_hw(item.image_hw, size)
        oh, ow = -(-rh * low // size), -(-rw * low // size)  # drop the padding, as at inference
        targets = (mask_coverage(item.masks[keep], item.image_hw, size, low) >= 0.5).float()
        class_ids = item.class_ids[keep] if self.model.class_head is not None else None
        weights = None
        if self.per_object:  # each object weighs 1 / objects, shared by its prompts
            counts = torch.bincount(keep)[keep].float()
            weights = 1.0 / (counts * len(torch.unique(keep)))
        losses = mask_losses(out.low_res_logits[..., :oh, :ow], out.iou_pred, out.class_logits,
                             targets[:, :oh, :ow], class_ids, self.weights, self.selection,
                             weights)
        return {**losses, "prompts": len(a.keep)}

    def forward(self, items: list[Prepared]) -> tuple[torch.Tensor, dict[str, float]]:
        if items and items[0].image is not None:
            embeddings = self.model.embed(torch.cat([it.image for it in items]))
            embeddings = [embeddings[i:i + 1] for i in range(len(items))]
        else:
            embeddings = [it.embedding for it in items]
        # zero that touches every trainable parameter: backward (and DDP's all-reduce) still
        # works when all of a rank's images lost their masks in the assignment
        total = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        stats: dict[str, float] = {"prompts": 0.0}
        for item, emb in zip(items, embeddings):
            losses = self.image_loss(item, emb)
            if losses is None:
                continue
            total = total + losses["total"] / len(items)
            stats["prompts"] += losses.pop("prompts")
            losses["loss"] = losses.pop("total").detach()
            for k, v in losses.items():
                stats[k] = stats.get(k, 0.0) + float(v) / len(items)
        return total, stats


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


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      *map(float, np_state[2:])],
            "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _config_diff(a: dict, b: dict, where: tuple = ()) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        path = where + (key,)
        if path in _RESUME_FREE_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, path)
        elif va != vb:
            out.append(f"{'.'.join(path)}: {va!r} -> {vb!r}")
    return out


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Holds the run: model, optimizer, schedule, data order, cache, logs and checkpoints."""

    def __init__(self, cfg: dict, progress: bool = True) -> None:
        self.cfg = cfg
        tc = cfg["train"]
        validate_config(cfg)
        if cfg["data"]["train"] is None:
            raise ValueError("data.train is not set: give a COCO or SAOM-layout dataset")
        self.device = _resolve_device(tc["device"], int(os.environ.get("LOCAL_RANK", 0)))
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
        self.step_module = TrainStep(self.model, cfg).to(self.device)
        params = [p for p in self.step_module.parameters() if p.requires_grad]
        oc = cfg["optim"]
        self.optimizer = torch.optim.AdamW(params, lr=float(oc["lr"]), betas=tuple(oc["betas"]),
                                           weight_decay=float(oc["weight_decay"]))
        self.batch = int(tc["batch_size"])
        self.accum = int(tc["grad_accum"])
        micro = len(self.dataset) // (self.dist.world * self.batch)
        self.steps_per_epoch = micro // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.dataset)} images are fewer than one global batch "
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
        self.writer = None

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
                "scaler": self.scaler.state_dict(), "step": self.step, "rng": _rng_state()}

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
        for old in sorted(self.checkpoint_dir.glob("step_*.pt"))[:-keep] if keep > 0 else []:
            old.unlink()
        remove_temp_files(self.checkpoint_dir)  # of writes killed before this run resumed
        return path

    def load(self, path: Path) -> None:
        state = load_train_state(path)
        diff = _config_diff(state["config"], self.cfg)
        if diff:
            raise ValueError(f"cannot resume from {path}: the config differs: {'; '.join(diff)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        _set_rng_state(state["rng"])

    # -- data
    def epoch_indices(self, epoch: int) -> list[int]:
        """This process's image indices for ``epoch`` (DistributedSampler: same order any resume)."""
        sampler = DistributedSampler(self.dataset, num_replicas=self.dist.world,
                                     rank=self.dist.rank, shuffle=True,
                                     seed=int(self.cfg["train"]["seed"]), drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)[:self.steps_per_epoch * self.accum * self.batch]

    def micro_batches(self) -> Iterator[tuple[int, list]]:
        """(epoch, [(index, Sample), ...]) from the current step on, forever."""
        done = self.step * self.accum
        per_epoch = self.steps_per_epoch * self.accum
        epoch, offset = divmod(done, per_epoch)
        while True:
            indices = self.epoch_indices(epoch)[offset * self.batch:]
            loader = DataLoader(_Indexed(self.dataset), batch_size=self.batch, sampler=indices,
                                collate_fn=list, num_workers=int(self.cfg["data"]["num_workers"]),
                                worker_init_fn=partial(dataloader_worker_init, os.getpid()))
            for batch in loader:
                yield epoch, batch
            epoch, offset = epoch + 1, 0

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
    def _open_logs(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.run_dir.mkdir(parents=True, exist_ok=True)
        csv_path = self.run_dir / "metrics.csv"
        rows = []
        if csv_path.is_file():  # a resumed run rewrites the steps after its checkpoint
            with open(csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg, sort_keys=False))
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step + 1)

    def log(self, epoch: int, lr: float, stats: dict[str, float], images_per_s: float) -> None:
        keys = ["loss", "dice", "focal", "ce", "iou", "prompts"]
        vec = torch.tensor([stats.get(k, 0.0) for k in keys], dtype=torch.float64)
        if self.dist.world > 1:
            dist.all_reduce(vec)
            vec /= self.dist.world
        if not self.dist.main:
            return
        row = {"step": self.step, "epoch": epoch, "lr": lr,
               **dict(zip(keys, vec.tolist())), "images_per_s": images_per_s}
        with open(self.run_dir / "metrics.csv", "a", newline="") as f:
            csv.DictWriter(f, fieldnames=_CSV_FIELDS).writerow(row)
        for k, v in row.items():
            if k not in ("step", "epoch"):
                self.writer.add_scalar(f"train/{k}", v, self.step)

    # -- the loop
    def fit(self, stop_after: Optional[int] = None) -> Path:
        """Train to ``total_steps`` (or ``stop_after`` more steps); returns the last checkpoint."""
        tc = self.cfg["train"]
        if self.dist.main:
            self._open_logs()
        end = self.total_steps if stop_after is None else min(self.total_steps,
                                                               self.step + stop_after)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                   desc="train", unit="step")
        acc: dict[str, float] = {}
        micro, t0, images, last = 0, time.perf_counter(), 0, None
        self.step_module.train()
        batches = self.micro_batches()
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
                acc[k] = acc.get(k, 0.0) + v / self.accum
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
        if self.writer is not None:
            self.writer.close()
        return last if last is not None else self.checkpoint_dir / "last.pt"


class _Indexed(torch.utils.data.Dataset):
    """(index, sample) pairs, so per-image randomness can be keyed by the index."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]


# ----------------------------------------------------------------------------- entry points
def load_train_state(path: str | os.PathLike) -> dict:
    """A training checkpoint written by Trainer.save (weights_only); ValueError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"training checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a saom-train training checkpoint")
    return state


def train(cfg: dict, resume: bool = False, stop_after: Optional[int] = None,
          progress: bool = True) -> Path:
    """Run (or, with ``resume``, continue from <run_dir>/checkpoints/last.pt) a training job."""
    trainer = Trainer(cfg, progress=progress)
    last = trainer.checkpoint_dir / "last.pt"
    if resume and trainer.dist.main:  # a kill mid-write left temp files; nothing writes now
        for folder in (trainer.run_dir, trainer.checkpoint_dir):
            remove_temp_files(folder)
    if resume and last.is_file():
        trainer.load(last)
    try:
        return trainer.fit(stop_after)
    finally:
        if trainer.dist.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def model_from_state(state: dict) -> Saom:
    """The Saom held by a training checkpoint."""
    config = ModelConfig(**state["model_config"])
    model = build_saom(config, state["class_names"] if config.num_classes > 0 else None)
    model.load_state_dict(state["model"])
    return model.eval()


def export(source: str | os.PathLike, out: str | os.PathLike,
           everything: Optional[dict[str, Any]] = None) -> Path:
    """Write the SAOM checkpoint the node loads, from a run directory, a training checkpoint, or
    a SAOM / official SAM checkpoint (to set the everything-mode settings it carries).

    The settings it carries: a training run's ``evaluate`` section (its grid, when null, the
    training assignment's) or a checkpoint's own, then ``everything`` (EverythingSettings fields).
    """
    source = Path(source)
    if source.is_dir():
        source = source / "checkpoints" / "last.pt"
    try:
        state: Optional[dict] = load_train_state(source)
    except ValueError:
        state = None
    if state is None:
        model, run = load_model(source), {}
        metadata = model.metadata
    else:
        model, cfg = model_from_state(state), state["config"]
        run = {"points_per_side": (cfg["evaluate"]["points_per_side"]
                                   or cfg["assignment"]["points_per_side"]),
               **cfg["evaluate"]["everything"]}
        metadata = {"source": str(source), "step": int(state["step"]), "train_config": cfg}
    settings = settings_for(model, **{**run, **(everything or {})})
    save_checkpoint(out, model, metadata, everything=carried_settings(settings))
    return Path(out)
