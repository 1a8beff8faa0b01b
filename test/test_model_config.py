"""Tests for saom_ros.model_config: ModelConfig checks its fields when made."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from saom_ros.model_config import PRESETS, ModelConfig

_TINY = dataclasses.asdict(PRESETS["tiny"])


def test_presets_and_numpy_integers_are_accepted() -> None:
    for name in PRESETS:
        assert ModelConfig.preset(name, num_classes=3).num_classes == 3
    config = ModelConfig(**{**_TINY, "encoder_depth": np.int64(2),
                            "encoder_global_attn_indexes": [np.int32(1)]})
    assert config == PRESETS["tiny"] and type(config.encoder_depth) is int
    assert type(config.encoder_global_attn_indexes[0]) is int


@pytest.mark.parametrize("field, value, message", [
    ("patch_size", 0, "patch_size must be an integer in"),
    ("encoder_embed_dim", -8, "encoder_embed_dim must be an integer in"),
    ("encoder_depth", "2", "encoder_depth must be an integer in"),
    ("encoder_depth", 2.0, "encoder_depth must be an integer in"),
    ("encoder_depth", True, "encoder_depth must be an integer in"),
    ("encoder_depth", 100_000, "encoder_depth must be an integer in"),
    ("num_classes", -1, "num_classes must be an integer in"),
    ("img_size", 1 << 20, "img_size must be an integer in"),
    ("window_size", -1, "window_size must be an integer in"),
    ("encoder_global_attn_indexes", [2], "encoder_global_attn_indexes must be an integer in"),
    ("encoder_global_attn_indexes", "1", "encoder_global_attn_indexes must be a list"),
    ("encoder_global_attn_indexes", 1, "encoder_global_attn_indexes must be a list"),
    ("encoder_num_heads", 5, "encoder_embed_dim must be a multiple of encoder_num_heads"),
    ("img_size", 250, "img_size must be a multiple of patch_size"),
    ("prompt_embed_dim", 72, "prompt_embed_dim must be a multiple of 16"),
    ("window_size", 17, "window_size must be at most img_size // patch_size"),
])
def test_bad_fields_are_refused_naming_the_field(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**_TINY, field: value})


def test_replace_is_checked_too() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        dataclasses.replace(PRESETS["tiny"], num_classes=-3)
