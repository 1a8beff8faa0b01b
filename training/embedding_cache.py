"""Frozen-encoder image embeddings on disk, keyed by image content and an encoder fingerprint."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from saom_ros.model import Saom
from saom_ros.training.train_state import atomic_torch_save


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
