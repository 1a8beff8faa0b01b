"""Shared fixtures: a small seeded SAOM model and a checkpoint of it written by save_checkpoint."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from saom_ros.classes import SAOM_CLASSES
from saom_ros.model import ModelConfig, Saom, build_saom, save_checkpoint

FIT_STEPS = 300


@pytest.fixture
def tiny_model() -> Saom:
    """A seeded tiny SAOM (55 classes), untrained, in eval mode on the CPU."""
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", num_classes=len(SAOM_CLASSES))
    return build_saom(config, SAOM_CLASSES).eval()


@pytest.fixture
def tiny_checkpoint(tiny_model: Saom, tmp_path: Path) -> Path:
    """``tiny_model`` saved as a SAOM checkpoint file."""
    path = tmp_path / "tiny_saom.pt"
    save_checkpoint(path, tiny_model, {"source": "test fixture"})
    return path


def _load_bench() -> ModuleType:
    """bench/everything_vs_amg.py, which holds the synthetic scenes and the quick fit."""
    path = Path(__file__).resolve().parents[1] / "bench" / "everything_vs_amg.py"
    spec = importlib.util.spec_from_file_location("everything_vs_amg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _load_bench()


@pytest.fixture(scope="session")
def shapes_model() -> Saom:
    """A tiny SAOM whose decoder was trained briefly on synthetic shapes (deterministic).

    Its masks are objects, not noise, so everything-mode results mean something.
    """
    torch.manual_seed(0)
    model = build_saom(ModelConfig.preset("tiny", num_classes=len(SAOM_CLASSES)), SAOM_CLASSES)
    return BENCH.fit_shapes(model, steps=FIT_STEPS)
