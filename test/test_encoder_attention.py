"""FusedAttention gives segment_anything's encoder attention (windowed and global blocks)."""
import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from saom_ros.encoder_attention import ATTENTION_FORMS, FusedAttention, fuse_attention
from saom_ros.model import ModelConfig, build_saom


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    model = build_saom(ModelConfig.preset("tiny")).eval()
    for block in model.sam.image_encoder.blocks:  # zero-initialised otherwise: make them count
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    return model


@pytest.mark.parametrize("form", ATTENTION_FORMS)
def test_fused_encoder_gives_the_same_embedding(model, form) -> None:
    fused = copy.deepcopy(model)
    fuse_attention(fused.sam.image_encoder, form)
    assert all(type(b.attn) is FusedAttention and b.attn.form == form
               for b in fused.sam.image_encoder.blocks)
    assert all(type(b.attn) is Attention for b in model.sam.image_encoder.blocks)
    x = torch.randn(1, 3, 256, 256) * 2
    with torch.no_grad():
        ref, out = model.embed(x), fused.embed(x)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert fused.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("form", ATTENTION_FORMS)
def test_relative_positions_change_the_result(model, form) -> None:
    """The comparison above would not notice a fused path that ignored the rel-pos terms, nor
    a cached rel-pos table that outlived a change of the parameter."""
    reference = model.sam.image_encoder.blocks[0].attn
    block = copy.deepcopy(reference)
    block.__class__, block.form = FusedAttention, form
    x = torch.randn(2, 8, 6, block.qkv.in_features)  # not square: rows and columns differ
    with torch.no_grad():
        with_rel = block(x)
        torch.testing.assert_close(with_rel, reference(x), atol=2e-5, rtol=1e-4)
        block.rel_pos_h.zero_(), block.rel_pos_w.zero_()
        without = block(x)
    assert (with_rel - without).abs().max() > 1e-2


def test_gradients_reach_the_relative_positions(model) -> None:
    block = copy.deepcopy(model.sam.image_encoder.blocks[0].attn)
    block.__class__ = FusedAttention
    with torch.no_grad():
        block(torch.randn(1, 8, 8, block.qkv.in_features))  # fills the table cache
    block(torch.randn(1, 8, 8, block.qkv.in_features)).square().sum().backward()
    assert block.rel_pos_h.grad.abs().sum() > 0 and block.rel_pos_w.grad.abs().sum() > 0


def test_an_unknown_form_is_refused(model) -> None:
    with pytest.raises(ValueError, match="folded"):
        fuse_attention(copy.deepcopy(model).sam.image_encoder, "flash")


def test_a_model_copied_under_inference_mode_runs_fused(model) -> None:
    """Its parameters are inference tensors, which keep no version counter for the cache key
    (as when an engine is made inside torch.inference_mode)."""
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        fused = copy.deepcopy(model)
        fuse_attention(fused.sam.image_encoder)
        assert fused.sam.image_encoder.blocks[0].attn.rel_pos_h.is_inference()
        out, ref = fused.embed(x), model.embed(x)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
