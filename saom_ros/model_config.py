"""Model architectures this package knows (SAM's sizes and small ones) and where its packaged
model lives. Imports no torch, so that the node's parameter table loads without it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

# The embedded default: SAOM-small, trained on synthetic scenes, shipped with the package.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "data" / "saom_small.pt"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a SAM/SAOM model (the decoder follows segment_anything's build_sam)."""

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
        object.__setattr__(self, "encoder_global_attn_indexes",
                           tuple(int(i) for i in self.encoder_global_attn_indexes))

    @staticmethod
    def preset(name: str, num_classes: int = 0) -> "ModelConfig":
        """The named architecture: vit_h, vit_l, vit_b or tiny."""
        if name not in PRESETS:
            raise ValueError(f"unknown model type {name!r}; expected one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], num_classes=num_classes)


PRESETS: dict[str, ModelConfig] = {
    "vit_h": ModelConfig(1280, 32, 16, (7, 15, 23, 31), 14),
    "vit_l": ModelConfig(1024, 24, 16, (5, 11, 17, 23), 14),
    "vit_b": ModelConfig(768, 12, 12, (2, 5, 8, 11), 14),
    "tiny": ModelConfig(96, 2, 3, (1,), 8, img_size=256, patch_size=16, prompt_embed_dim=64),
}
