"""FusedAttention gives segment_anything's encoder attention (windowed and global blocks)."""
import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from saom_ros.encoder_attention import FusedAttention, fuse_attention
from saom_ros.model import ModelConfig, build_saom


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    model = build_saom(ModelConfig.preset("tiny")).eval()
    for block in model.sam.image_encoder.blocks:  # zero-initialised otherwise: make them count
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    return model


def test_fused_encoder_gives_the_same_embedding(model) -> None:
    fused = copy.deepcopy(model)
    fuse_attention(fused.sam.image_encoder)
    assert all(type(b.attn) is FusedAttention for b in fused.sam.image_encoder.blocks)
    assert all(type(b.attn) is Attention for b in model.sam.image_encoder.blocks)
    x = torch.randn(1, 3, 256, 256) * 2
    with torch.no_grad():
        ref, out = model.embed(x), fused.embed(x)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert fused.state_dict().keys() == model.state_dict().keys()


def test_relative_positions_change_the_result(model) -> None:
    """The comparison above would not notice a fused path that ignored the rel-pos terms."""
    block = copy.deepcopy(model.sam.image_encoder.blocks[0].attn)
    block.__class__ = FusedAttention
    x = torch.randn(1, 8, 8, block.qkv.in_features)
    with torch.no_grad():
        with_rel = block(x)
        block.rel_pos_h.zero_(), block.rel_pos_w.zero_()
        without = block(x)
    assert (with_rel - without).abs().max() > 1e-2
