"""The training config: config/train.yaml's defaults, a YAML file over them, overrides, checks."""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml


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
