"""The CUDA encoder: the attention form is chosen by measurement; graph replay equals eager."""
import copy

import pytest
import torch

from saom_ros.cuda_encoder import CudaEncoder, choose_attention_form
from saom_ros.encoder_attention import ATTENTION_FORMS, fuse_attention
from saom_ros.model import ModelConfig, build_saom


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(5)
    encoder = build_saom(ModelConfig.preset("tiny")).eval().sam.image_encoder
    for block in encoder.blocks:
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    return encoder


def test_the_fastest_measured_form_is_kept(encoder) -> None:
    fused = fuse_attention(copy.deepcopy(encoder))
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        times = choose_attention_form(fused, x, reps=1)
        assert set(times) == set(ATTENTION_FORMS) and all(t > 0 for t in times.values())
        assert {b.attn.form for b in fused.blocks} == {min(times, key=times.get)}
        torch.testing.assert_close(fused(x), encoder(x), atol=2e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_replay_gives_the_eager_embedding_of_each_new_image(encoder) -> None:
    eager = fuse_attention(copy.deepcopy(encoder)).cuda()
    graphed = CudaEncoder(fuse_attention(copy.deepcopy(encoder)).cuda())
    with torch.inference_mode():
        for seed in range(3):
            x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed)).cuda()
            torch.testing.assert_close(graphed(x), eager(x), atol=1e-4, rtol=1e-3)
    assert set(graphed.form_seconds) == set(ATTENTION_FORMS)
    assert all(v is not None for v in graphed._graphs.values())
