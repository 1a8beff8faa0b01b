"""The training config: config/train.yaml's defaults, a YAML file over them, overrides, checks."""
from __future__ import annotations

import copy
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from saom_ros.model_config import PRESETS


def _ament_share() -> Optional[Path]:
    """share/saom_ros of the prefix the ament index finds (a sourced colcon install space);
    None without ament_index_python (training runs without ROS) or when no prefix has it."""
    try:
        from ament_index_python.packages import get_package_prefix
    except ImportError:
        return None
    try:  # get_package_share_directory's path, without its warning when that is missing
        return Path(get_package_prefix("saom_ros")) / "share" / "saom_ros"
    except (LookupError, OSError):  # not found (PackageNotFoundError); AMENT_PREFIX_PATH unset
        return None


def default_config_path() -> Path:
    """config/train.yaml of a source/develop tree, else the installed share/saom_ros copy: the
    ament index's (a colcon install space), then this Python's prefix (pip, make setup)."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / "train.yaml"]
    share = _ament_share()
    if share is not None:
        candidates.append(share / "config" / "train.yaml")
    candidates.append(Path(sys.prefix) / "share" / "saom_ros" / "config" / "train.yaml")
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
# (section, key): (smallest, largest) for integers; None: no bound. Optional ones may be null.
_INTS = {("train", "batch_size"): (1, None), ("train", "grad_accum"): (1, None),
         ("train", "log_every"): (1, None), ("train", "checkpoint_every"): (1, None),
         ("train", "epochs"): (1, None), ("train", "keep_checkpoints"): (0, None),
         ("train", "seed"): (0, 2**32 - 1),  # numpy's seed range
         ("assignment", "points_per_side"): (1, None), ("assignment", "points_per_mask"): (1, None),
         ("data", "max_prompts_per_image"): (1, None), ("data", "num_workers"): (0, None),
         ("optim", "warmup_steps"): (0, None)}
_OPTIONAL_INTS = {("train", "max_steps"): (1, None), ("evaluate", "points_per_side"): (1, None),
                  ("evaluate", "max_images"): (1, None)}
# (section, key): (smallest, largest) for real numbers, both included.
_FLOATS = {("optim", "lr"): (0.0, None), ("optim", "weight_decay"): (0.0, None),
           ("optim", "min_lr_ratio"): (0.0, 1.0), ("optim", "grad_clip"): (0.0, None),
           ("loss", "dice"): (0.0, None), ("loss", "focal"): (0.0, None),
           ("loss", "ce"): (0.0, None), ("loss", "iou"): (0.0, None),
           ("loss", "focal_alpha"): (0.0, 1.0), ("loss", "focal_gamma"): (0.0, None),
           ("assignment", "min_coverage"): (0.0, 1.0), ("evaluate", "match_iou"): (0.0, 1.0)}
_BOOLS = (("model", "class_agnostic"), ("model", "freeze_encoder"), ("loss", "per_object"),
          ("train", "amp"))


def _range_text(low: Optional[float], high: Optional[float]) -> str:
    if high is None:
        return f">= {low}"
    return f"in [{low}, {high}]"


def _check_int(name: str, value: Any, low: int, high: Optional[int]) -> None:
    if (not isinstance(value, int) or isinstance(value, bool) or value < low
            or (high is not None and value > high)):
        raise ValueError(f"{name} must be an integer {_range_text(low, high)}, not {value!r}")


def _check_float(name: str, value: Any, low: float, high: Optional[float]) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and value >= low and (high is None or value <= high))
    if not ok:
        raise ValueError(f"{name} must be a number {_range_text(low, high)}, not {value!r}")


def _check_betas(value: Any) -> None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in value)
    if not ok:  # a beta of 1 would freeze AdamW's running averages
        raise ValueError(f"optim.betas must be a list of two numbers in [0, 1), e.g. "
                         f"[0.9, 0.999], not {value!r}")


def check_device(value: Any, name: str = "train.device") -> None:
    """auto, cpu, cuda or cuda:N, and a GPU when it names one (torch only says 'no driver')."""
    import torch
    if value in ("auto", "cpu"):
        return
    if not isinstance(value, str) or not re.fullmatch(r"cuda(:\d+)?", value):
        raise ValueError(f"{name} must be auto, cpu, cuda or cuda:N, not {value!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"{name} is {value!r} but this machine has no usable CUDA GPU "
                         "(torch.cuda.is_available() is False); use auto or cpu")
    index = int(value.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"{name} is {value!r} but there are only "
                         f"{torch.cuda.device_count()} CUDA devices")


def _check_path(name: str, value: Any, optional: bool) -> None:
    if not (isinstance(value, str) and value) and not (optional and value is None):
        raise ValueError(f"{name} must be a path{' or null' if optional else ''}, not {value!r}")


def validate_config(cfg: dict) -> None:
    """ValueError naming the key and value for anything that would only fail deep inside a run:
    choices, types and ranges of every number, flag, path and list (the device: check_device)."""
    for (section, key), choices in _CHOICES.items():
        if cfg[section][key] not in choices:
            raise ValueError(f"{section}.{key} must be one of {', '.join(choices)}, "
                             f"not {cfg[section][key]!r}")
    if cfg["model"]["model_type"] not in PRESETS:
        raise ValueError(f"model.model_type must be one of {', '.join(PRESETS)}, "
                         f"not {cfg['model']['model_type']!r}")
    for (section, key), (low, high) in _INTS.items():
        _check_int(f"{section}.{key}", cfg[section][key], low, high)
    for (section, key), (low, high) in _OPTIONAL_INTS.items():
        if cfg[section][key] is not None:
            _check_int(f"{section}.{key}", cfg[section][key], low, high)
    for (section, key), (low, high) in _FLOATS.items():
        _check_float(f"{section}.{key}", cfg[section][key], low, high)
    if cfg["optim"]["lr"] == 0:
        raise ValueError("optim.lr must be a number > 0, not 0")
    for section, key in _BOOLS:
        if not isinstance(cfg[section][key], bool):
            raise ValueError(f"{section}.{key} must be true or false, not {cfg[section][key]!r}")
    _check_betas(cfg["optim"]["betas"])
    _check_path("model.init", cfg["model"]["init"], optional=True)
    _check_path("data.train", cfg["data"]["train"], optional=True)
    _check_path("train.run_dir", cfg["train"]["run_dir"], optional=False)
    cache = cfg["train"]["embedding_cache"]
    if not isinstance(cache, bool):
        _check_path("train.embedding_cache", cache, optional=False)


def _numbers_from_text(cfg: dict) -> dict:
    """``cfg`` with the real-number keys that YAML 1.1 leaves as text (``1e-3``: no dot) as floats."""
    for section, key in _FLOATS:
        value = cfg[section][key]
        if isinstance(value, str):
            try:
                cfg[section][key] = float(value)
            except ValueError:
                pass  # not a number: validate_config names it
    return cfg


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
    return _numbers_from_text(cfg)
