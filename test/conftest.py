"""Shared fixtures: a small seeded SAOM model and a checkpoint of it written by save_checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saom_ros.classes import SAOM_CLASSES
from saom_ros.model import ModelConfig, Saom, build_saom, save_checkpoint


@pytest.fixture
def tiny_model() -> Saom:
    """A seeded tiny SAOM (55 classes), untrained, in eval mode on the CPU."""
    torch.manual_seed(0)
    return build_saom(ModelConfig.preset("tiny", num_classes=len(SAOM_CLASSES)), SAOM_CLASSES).eval()


@pytest.fixture
def tiny_checkpoint(tiny_model: Saom, tmp_path: Path) -> Path:
    """``tiny_model`` saved as a SAOM checkpoint file."""
    path = tmp_path / "tiny_saom.pt"
    save_checkpoint(path, tiny_model, {"source": "test fixture"})
    return path
