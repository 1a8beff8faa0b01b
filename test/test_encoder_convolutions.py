"""gemm_convolutions gives segment_anything's patch embedding and neck (same parameters)."""
import copy

import pytest
import torch
from torch import nn

from saom_ros.encoder_convolutions import ChannelsLastNeck, GemmPatchEmbed, gemm_convolutions
from saom_ros.everything import EverythingEngine
from saom_ros.model import ModelConfig, build_saom


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(5)
    model = build_saom(ModelConfig.preset("tiny")).eval()
    for module in model.sam.image_encoder.neck:  # LayerNorm2d starts at weight 1, bias 0
        for p in module.parameters():
            nn.init.normal_(p, std=0.5)
    return model


def test_same_embedding_in_channels_last_memory(model) -> None:
    fast = copy.deepcopy(model)
    gemm_convolutions(fast.sam.image_encoder)
    assert type(fast.sam.image_encoder.patch_embed) is GemmPatchEmbed
    assert type(fast.sam.image_encoder.neck) is ChannelsLastNeck
    x = torch.randn(2, 3, 256, 256) * 2  # two images: the batch stays apart
    with torch.no_grad():
        ref, out = model.embed(x), fast.embed(x)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert fast.state_dict().keys() == model.state_dict().keys()


def test_other_necks_are_refused(model) -> None:
    other = copy.deepcopy(model.sam.image_encoder)
    other.neck = nn.Sequential(nn.Conv2d(96, 64, 3), nn.ReLU())
    with pytest.raises(ValueError, match="neck"):
        gemm_convolutions(other)


def test_the_cpu_engine_uses_them_and_leaves_the_model_as_it_was(model) -> None:
    engine = EverythingEngine(model, device="cpu")
    assert type(engine.model.sam.image_encoder.neck) is ChannelsLastNeck
    assert type(model.sam.image_encoder.neck) is nn.Sequential
    assert type(model.sam.image_encoder.patch_embed) is not GemmPatchEmbed
