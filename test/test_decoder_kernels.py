"""The fused decoder kernels, run by Triton's interpreter on the CPU, match segment_anything."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saom_ros import decoder_kernels

pytest.importorskip("triton")


def test_padded_tokens() -> None:
    assert [decoder_kernels.padded_tokens(t) for t in (1, 2, 5, 7, 8, 9)] == [2, 2, 8, 8, 8, 16]


def test_kernels_give_segment_anything_decoder() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("decoder_kernels_check.py"))],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["interpret"]
    # Shared image side: layer 1 attends in PyTorch, then both kernels; per prompt: all kernels.
    assert result["shared"]["calls"] == ["image_to_tokens", "tokens_to_image",
                                         "image_to_tokens", "tokens_to_image"]
    assert result["per_prompt"]["calls"] == ["tokens_to_image", "image_to_tokens"] * 2 + \
        ["tokens_to_image"]
    for case in ("shared", "per_prompt"):
        assert result[case]["mask_diff"] < 1e-4 and result[case]["iou_diff"] < 1e-4, result
