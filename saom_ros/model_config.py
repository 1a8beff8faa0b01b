"""Model architectures this package knows (SAM's sizes and small ones) and where its packaged
model lives. Imports no torch, so that the node's parameter table loads without it.
"""
from __future__ import annotations

import dataclasses
import operator
from pathlib import Path
from typing import Any

# The embedded default: SAOM-small, trained on synthetic scenes, shipped with the package.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "data" / "saom_small.pt"

# Bounds far beyond SAM's largest (vit_h: 1280 wide, 32 deep, 1024-pixel input): a config past
# them comes from a damaged or hostile file, and even the shape check a loader makes on the meta
# device would take minutes (depth) or overflow (sizes). Field -> (least, most).
_MAX_SIZE = 1 << 16
_RANGES: dict[str, tuple[int, int]] = {
    "encoder_embed_dim": (1, _MAX_SIZE), "encoder_depth": (1, 1024),
    "encoder_num_heads": (1, _MAX_SIZE), "window_size": (0, _MAX_SIZE),
    "img_size": (1, _MAX_SIZE), "patch_size": (1, _MAX_SIZE),
    "prompt_embed_dim": (1, _MAX_SIZE), "num_classes": (0, _MAX_SIZE)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a SAM/SAOM model (the decoder follows segment_anything's build_sam).

    Checked when made (ValueError naming the field): integers in range, and the divisibility
    the model's blocks need, so that no bad config gets as far as building a model.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int
    img_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    num_classes: int = 0

    def __post_init__(self) -> None:
        for name, (low, high) in _RANGES.items():
            object.__setattr__(self, name, _integer(name, getattr(self, name), low, high))
        indexes = self.encoder_global_attn_indexes
        if isinstance(indexes, (str, bytes)) or not hasattr(indexes, "__iter__"):
            raise ValueError(f"encoder_global_attn_indexes must be a list of block indexes, "
                             f"got {indexes!r:.100}")
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(
            _integer("encoder_global_attn_indexes", i, 0, self.encoder_depth - 1)
            for i in indexes))
        self._check_divisibility()

    def _check_divisibility(self) -> None:
        """The sizes segment_anything's blocks split evenly (else they fail or misbuild)."""
        grid = self.img_size // self.patch_size
        for what, ok in (
                ("encoder_embed_dim must be a multiple of encoder_num_heads",  # head width
                 self.encoder_embed_dim % self.encoder_num_heads == 0),
                ("img_size must be a multiple of patch_size", self.img_size % self.patch_size == 0),
                # the decoder's 8 heads attend at half width; its upscaling divides by 8
                ("prompt_embed_dim must be a multiple of 16", self.prompt_embed_dim % 16 == 0),
                ("window_size must be at most img_size // patch_size", self.window_size <= grid)):
            if not ok:
                raise ValueError(f"{what} (got {self})")

    @staticmethod
    def preset(name: str, num_classes: int = 0) -> "ModelConfig":
        """The named architecture: vit_h, vit_l, vit_b or tiny."""
        if name not in PRESETS:
            raise ValueError(f"unknown model type {name!r}; expected one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], num_classes=num_classes)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; ValueError naming ``name`` otherwise. Integer types
    (numpy's too) pass; bools, floats and text do not (``int()`` would quietly round or parse)."""
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or not low <= number <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r:.100}")
    return number


PRESETS: dict[str, ModelConfig] = {
    "vit_h": ModelConfig(1280, 32, 16, (7, 15, 23, 31), 14),
    "vit_l": ModelConfig(1024, 24, 16, (5, 11, 17, 23), 14),
    "vit_b": ModelConfig(768, 12, 12, (2, 5, 8, 11), 14),
    "tiny": ModelConfig(96, 2, 3, (1,), 8, img_size=256, patch_size=16, prompt_embed_dim=64),
}
