"""The fused decoder kernels, run by Triton's interpreter on the CPU, match segment_anything."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saom_ros import decoder_kernels

triton = pytest.importorskip("triton")


def test_padded_tokens() -> None:
    assert [decoder_kernels.padded_tokens(t) for t in (1, 2, 5, 7, 8, 9)] == [2, 2, 8, 8, 8, 16]


def test_kernels_give_segment_anything_decoder() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("decoder_kernels_check.py"))],
                         env=env, capture_output=True, text=True, timeout=300)
    if out.returncode and "only 0-dimensional arrays can be converted" in out.stderr:
        # Triton 3.6's interpreter turns loop bounds into Python ints in a way NumPy 2.4
        # refuses; Triton 3.8 does not (the compiled kernels are unaffected).
        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run loops with NumPy "
                    f"{np.__version__}")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["interpret"]
    # Shared image side: layer 1 attends in PyTorch, then both kernels; per prompt: all kernels.
    assert result["shared"]["calls"] == ["image_to_tokens", "tokens_to_image",
                                         "image_to_tokens", "tokens_to_image"]
    assert result["per_prompt"]["calls"] == ["tokens_to_image", "image_to_tokens"] * 2 + \
        ["tokens_to_image"]
    for case in ("shared", "per_prompt"):
        assert result[case]["mask_diff"] < 1e-4 and result[case]["iou_diff"] < 1e-4, result


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels need a GPU")
def test_compiled_kernels_give_the_pytorch_form_on_cuda(monkeypatch) -> None:
    """float32 on CUDA: tl.dot rounds its inputs to TF32, so signs are compared, not values."""
    from saom_ros.model import ModelConfig, build_saom
    torch.manual_seed(1)
    model = build_saom(ModelConfig.preset("tiny")).eval().cuda()
    grid = model.config.img_size // model.config.patch_size
    emb = torch.randn(1, model.config.prompt_embed_dim, grid, grid, device="cuda")
    pts = torch.rand(64, 1, 2, device="cuda") * model.config.img_size
    labels = torch.ones(64, 1, dtype=torch.int, device="cuda")
    with torch.no_grad():
        fused = model.decode(emb, pts, labels)
        monkeypatch.setattr(decoder_kernels, "available", lambda *a: False)
        plain = model.decode(emb, pts, labels)
    agree = ((fused.low_res_logits > 0) == (plain.low_res_logits > 0)).float().mean()
    assert agree > 0.999
    torch.testing.assert_close(fused.iou_pred, plain.iou_pred, atol=1e-2, rtol=1e-2)
