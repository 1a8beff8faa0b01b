"""The graphed token stage: prompt buckets; on CUDA the eager token stage's results, outputs
that outlive the next call, and the eager path for inputs the graphs do not cover."""
import pytest
import torch

from saom_ros.cuda_tokens import MIN_BUCKET, CudaTokenStage, prompt_bucket
from saom_ros.model import ModelConfig, build_saom

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_prompts_are_padded_to_the_next_power_of_two() -> None:
    assert [prompt_bucket(n) for n in (0, 1, MIN_BUCKET, MIN_BUCKET + 1, 100, 256, 257)] == \
        [MIN_BUCKET, MIN_BUCKET, MIN_BUCKET, 2 * MIN_BUCKET, 128, 256, 512]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return build_saom(ModelConfig.preset("tiny")).eval().cuda() if torch.cuda.is_available() \
        else None


def _prompts(model, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    grid = cfg.img_size // cfg.patch_size
    emb = torch.randn(1, cfg.prompt_embed_dim, grid, grid, generator=g).cuda()
    return emb, (torch.rand(n, 1, 2, generator=g) * cfg.img_size).cuda(), \
        torch.ones(n, 1, dtype=torch.int).cuda()


def _assert_same(got, want) -> None:
    # Not bit for bit: a padded batch can take another path than the eager one (one prompt
    # attends in the shared-image form, with SDPA instead of the fused kernels), and tl.dot
    # rounds float32 inputs to TF32 (differences up to ~7e-4 seen on an H100).
    for name in ("tokens", "image", "iou_pred"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=2e-3, rtol=1e-2)
    assert got.grid == want.grid


@cuda
def test_replays_give_the_eager_token_stage_for_any_prompt_count(model) -> None:
    stage = CudaTokenStage(model)
    with torch.inference_mode():
        for seed, n in enumerate((1, 5, MIN_BUCKET, 40, 40, 3)):  # new images, padded buckets
            inputs = _prompts(model, n, seed)
            _assert_same(stage(*inputs), model.decode_tokens(*inputs))
    assert stage._graphs and all(g is not None for g in stage._graphs.values())


@cuda
def test_outputs_stay_valid_until_the_call_after_next(model) -> None:
    stage = CudaTokenStage(model)
    with torch.inference_mode():
        first, second = _prompts(model, 20, 0), _prompts(model, 20, 1)
        a = stage(*first)
        b = stage(*second)  # queued ahead while ``a`` is still to be read
        _assert_same(a, model.decode_tokens(*first))
        _assert_same(b, model.decode_tokens(*second))


@cuda
def test_one_embedding_per_prompt_runs_eagerly(model) -> None:
    stage = CudaTokenStage(model)
    emb, coords, labels = _prompts(model, 4, 0)
    with torch.inference_mode():
        per_prompt = emb.expand(4, -1, -1, -1).contiguous()
        _assert_same(stage(per_prompt, coords, labels), model.decode_tokens(per_prompt, coords,
                                                                            labels))
    assert not stage._graphs
