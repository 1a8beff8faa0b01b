"""Tests for saom_ros.model: building, decoding, saving and loading checkpoints."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import resize, to_pil_image

from saom_ros import decoder
from saom_ros import model as model_module
from saom_ros.classes import AGNOSTIC_CLASSES, SAOM_CLASSES
from saom_ros.model import (
    CheckpointError, ModelConfig, Saom, broadcast_to_dtype, build_saom, load_model,
    resize_on_device, save_checkpoint)


def _decode(model: Saom, seed: int = 0):
    torch.manual_seed(seed)
    image = np.random.default_rng(seed).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    with torch.no_grad():
        x, _ = model.preprocess(image)
        pts = torch.rand(5, 1, 2) * model.config.img_size
        return model.decode(model.embed(x), pts, torch.ones(5, 1, dtype=torch.int))


def test_presets_match_segment_anything_sizes() -> None:
    b = ModelConfig.preset("vit_b")
    assert (b.encoder_embed_dim, b.encoder_depth, b.encoder_num_heads) == (768, 12, 12)
    assert ModelConfig.preset("vit_h").encoder_global_attn_indexes == (7, 15, 23, 31)
    assert ModelConfig.preset("tiny", num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match="vit_h"):
        ModelConfig.preset("vit_x")


def test_preprocess_resizes_longest_side_and_pads(tiny_model: Saom) -> None:
    x, hw = tiny_model.preprocess(np.zeros((100, 200, 3), np.uint8))
    assert x.shape == (1, 3, 256, 256) and hw == (128, 256)
    # padding is zero after normalisation; the image area is normalised black (negative)
    assert torch.all(x[..., 128:, :] == 0) and torch.all(x[..., :128, :] < 0)


def test_decode_shapes_and_class_logits_per_prompt(tiny_model: Saom) -> None:
    out = _decode(tiny_model)
    assert out.low_res_logits.shape == (5, 3, 64, 64)
    assert out.iou_pred.shape == (5, 3)
    assert out.class_logits.shape == (5, len(SAOM_CLASSES))
    single = tiny_model.decode(torch.zeros(1, 64, 16, 16), torch.zeros(2, 1, 2),
                               torch.ones(2, 1, dtype=torch.int), multimask=False)
    assert single.low_res_logits.shape == (2, 1, 64, 64)


def test_prompt_inputs_are_segment_anything_prompt_encoders(tiny_model: Saom) -> None:
    torch.manual_seed(1)
    coords = torch.rand(5, 3, 2) * tiny_model.config.img_size
    labels = torch.tensor([[1, 1, 0], [1, 0, -1], [0, 0, 0], [1, -1, -1], [-1, 1, 0]])
    pe, sparse, dense = tiny_model.prompt_inputs(coords, labels)
    encoder = tiny_model.sam.prompt_encoder
    ref_sparse, ref_dense = encoder(points=(coords, labels), boxes=None, masks=None)
    assert torch.equal(sparse, ref_sparse) and torch.equal(dense, ref_dense)
    assert torch.equal(pe, encoder.get_dense_pe())


def test_decode_matches_segment_anything_decoder(tiny_model: Saom) -> None:
    sam = tiny_model.sam
    with torch.no_grad():
        emb = torch.randn(1, 64, 16, 16)
        pts, labels = torch.rand(4, 1, 2) * 256, torch.ones(4, 1, dtype=torch.int)
        sparse, dense = sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
        ref_masks, ref_iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse,
                                              dense, multimask_output=True)
        out = tiny_model.decode(emb, pts, labels)
    torch.testing.assert_close(out.low_res_logits, ref_masks)
    torch.testing.assert_close(out.iou_pred, ref_iou)


def test_cpu_mask_blocks_give_the_masks_of_one_pass(tiny_model: Saom,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    emb = torch.randn(1, 64, 16, 16)
    pts, labels = torch.rand(40, 1, 2) * 256, torch.ones(40, 1, dtype=torch.int)
    with torch.no_grad():
        blocked = tiny_model.decode(emb, pts, labels).low_res_logits  # 2 blocks of 20 prompts
        monkeypatch.setattr(decoder, "CPU_MASK_BLOCK_BYTES", 1 << 40)
        whole = tiny_model.decode(emb, pts, labels).low_res_logits
    assert torch.equal(blocked, whole)


def test_decode_extent_gives_the_top_left_of_the_full_masks(tiny_model: Saom) -> None:
    with torch.no_grad():
        emb = torch.randn(1, 64, 16, 16)
        pts, labels = torch.rand(3, 1, 2) * 256, torch.ones(3, 1, dtype=torch.int)
        full = tiny_model.decode(emb, pts, labels)
        part = tiny_model.decode(emb, pts, labels, extent=(11, 7))
    assert part.low_res_logits.shape == (3, 3, 44, 28)
    torch.testing.assert_close(part.low_res_logits, full.low_res_logits[..., :44, :28])
    torch.testing.assert_close(part.iou_pred, full.iou_pred)
    torch.testing.assert_close(part.class_logits, full.class_logits)


@pytest.mark.parametrize("per_prompt_embedding", [False, True])
def test_decode_matches_segment_anything_decoder_vit_b_sized(per_prompt_embedding: bool) -> None:
    # The official decoder size (dim 256, 64x64 embedding); one encoder block keeps it quick.
    torch.manual_seed(1)
    config = dataclasses.replace(ModelConfig.preset("vit_b"), encoder_depth=1,
                                 encoder_global_attn_indexes=(0,))
    model = build_saom(config).eval()
    sam = model.sam
    with torch.no_grad():
        emb = torch.randn(6 if per_prompt_embedding else 1, 256, 64, 64)
        pts, labels = torch.rand(6, 1, 2) * 1024, torch.ones(6, 1, dtype=torch.int)
        sparse, dense = sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
        # segment_anything's decoder takes one image; per-prompt embeddings go one at a time.
        ref = [sam.mask_decoder(emb[i % emb.shape[0]][None], sam.prompt_encoder.get_dense_pe(),
                                sparse[i:i + 1], dense[i:i + 1], multimask_output=True)
               for i in range(6)]
        ref_masks, ref_iou = (torch.cat(r) for r in zip(*ref))
        out = model.decode(emb, pts, labels)
    torch.testing.assert_close(out.low_res_logits, ref_masks, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.iou_pred, ref_iou, atol=1e-5, rtol=1e-5)


def test_decode_is_trainable(tiny_model: Saom) -> None:
    x = torch.zeros(1, 64, 16, 16)
    out = tiny_model.decode(x, torch.rand(3, 1, 2) * 256, torch.ones(3, 1, dtype=torch.int))
    (out.class_logits.sum() + out.low_res_logits.mean()).backward()
    assert tiny_model.class_head.weight.grad is not None
    assert tiny_model.sam.mask_decoder.iou_token.weight.grad is not None


def test_build_rejects_wrong_class_count() -> None:
    with pytest.raises(ValueError, match="3 classes"):
        build_saom(ModelConfig.preset("tiny", num_classes=3), ("a", "b"))
    agnostic = build_saom(ModelConfig.preset("tiny"))
    assert agnostic.class_head is None and agnostic.class_names == AGNOSTIC_CLASSES


def test_save_load_round_trip_gives_equal_outputs(tiny_model: Saom, tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint)
    assert loaded.config == tiny_model.config and loaded.class_names == SAOM_CLASSES
    assert not loaded.training
    a, b = _decode(tiny_model), _decode(loaded)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    assert ckpt["format"] == "saom" and ckpt["format_version"] == 1
    assert ckpt["metadata"] == {"source": "test fixture"}
    assert not list(tiny_checkpoint.parent.glob("*.tmp"))  # atomic write left no temp file


def test_official_state_dict_loads_class_agnostic(tiny_model: Saom, tmp_path: Path) -> None:
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(tiny_model.sam.state_dict(), path)
    for model_type in (None, "tiny"):
        model = load_model(path, model_type=model_type)
        assert model.class_head is None and model.class_names == ("object",)
        assert model.config == ModelConfig.preset("tiny")
        torch.testing.assert_close(_decode(model).low_res_logits,
                                   _decode(tiny_model).low_res_logits)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_a_directory_is_reported_as_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is a directory, not a "
                                              "checkpoint file"):
        load_model(tmp_path)


class _Payload:
    """A pickle that would run a command when loaded without weights_only."""

    def __reduce__(self) -> tuple:
        return os.system, ("touch pwned",)


def test_a_refused_pickle_names_the_blocked_global(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload()}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    text = str(err.value)
    assert f"GLOBAL {os.system.__module__}.system" in text and "blocked" in text
    assert "weights_only` set to `False`" not in text  # torch's advice is not passed on
    assert "\n" not in text and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("hw", [(1000, 1), (1, 1000), (3, 4000)])
def test_thin_images_keep_a_one_pixel_short_side(tiny_model: Saom, hw: tuple) -> None:
    x, input_hw = tiny_model.preprocess(np.full((*hw, 3), 200, np.uint8))
    assert x.shape == (1, 3, 256, 256)
    assert input_hw == ((256, 1) if hw[0] > hw[1] else (1, 256))


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_not_a_checkpoint(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)  # a torch file, but neither format
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a checkpoint") as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_official_architecture_mismatch_names_keys(tiny_model: Saom, tmp_path: Path) -> None:
    state = tiny_model.sam.state_dict()
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "sam_vit_odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="mask_decoder.iou_token.weight") as err:
        load_model(path, model_type="tiny")
    assert "mask_decoder.extra.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="matches no known architecture"):
        load_model(path)


def test_saom_architecture_mismatch_names_keys(tiny_checkpoint: Path) -> None:
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["config"]["encoder_depth"] = 3  # the state dict has 2 blocks
    torch.save(ckpt, tiny_checkpoint)
    with pytest.raises(CheckpointError, match=r"architecture mismatch.*image_encoder\.blocks\.2"):
        load_model(tiny_checkpoint)


def test_class_count_mismatch(tiny_checkpoint: Path) -> None:
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["class_names"] = ckpt["class_names"][:10]
    torch.save(ckpt, tiny_checkpoint)
    with pytest.raises(CheckpointError, match="class-count mismatch.*55.*10"):
        load_model(tiny_checkpoint)


def test_unsupported_format_version(tiny_checkpoint: Path) -> None:
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["format_version"] = 99
    torch.save(ckpt, tiny_checkpoint)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(tiny_checkpoint)


def test_checkpoint_carries_everything_settings_and_metadata(tiny_model: Saom,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "carrying.pt"
    settings = {"points_per_side": 16, "pred_iou_thresh": 0.5, "compile": False}
    save_checkpoint(path, tiny_model, {"step": 3}, everything=settings)
    loaded = load_model(path)
    assert loaded.everything == settings and loaded.metadata == {"step": 3}
    assert torch.load(path, weights_only=True)["format_version"] == 1
    save_checkpoint(tmp_path / "again.pt", loaded)  # a loaded model keeps what it carries
    again = load_model(tmp_path / "again.pt")
    assert again.everything == settings and again.metadata == {"step": 3}
    save_checkpoint(tmp_path / "cleared.pt", loaded, metadata={}, everything={})
    assert load_model(tmp_path / "cleared.pt").everything == {}


def test_files_without_everything_settings_load_with_none(tiny_model: Saom,
                                                          tiny_checkpoint: Path) -> None:
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    del ckpt["everything"]  # a checkpoint written before the key existed
    torch.save(ckpt, tiny_checkpoint)
    assert load_model(tiny_checkpoint).everything == {}
    official = tiny_checkpoint.parent / "sam_vit_tiny.pth"
    torch.save(tiny_model.sam.state_dict(), official)
    model = load_model(official)
    assert model.everything == {} and model.metadata == {}


@pytest.mark.parametrize("bad", [["pred_iou_thresh", 0.5], {"pred_iou_thresh": [0.5]},
                                 {3: 0.5}, {"pred_iou_thresh": None}])
def test_malformed_everything_settings(tiny_model: Saom, tiny_checkpoint: Path, bad) -> None:
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["everything"] = bad
    torch.save(ckpt, tiny_checkpoint)
    with pytest.raises(CheckpointError, match="'everything' must map") as err:
        load_model(tiny_checkpoint)
    assert str(tiny_checkpoint) in str(err.value)
    with pytest.raises(CheckpointError, match="'everything' must map"):
        save_checkpoint(tiny_checkpoint.parent / "never.pt", tiny_model, everything=bad)
    assert not (tiny_checkpoint.parent / "never.pt").exists()


@pytest.mark.parametrize("hw, size", [((480, 640), (768, 1024)), ((1080, 1920), (144, 256)),
                                      ((300, 200), (256, 171))])
def test_resize_on_device_is_within_one_grey_level_of_pil(hw: tuple, size: tuple) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    image[hw[0] // 3:hw[0] // 2, hw[1] // 4:hw[1] // 2] = 200  # flat regions and edges too
    ref = np.array(resize(to_pil_image(image), list(size))).astype(np.int16)
    out = resize_on_device(torch.as_tensor(image), size)[0].permute(1, 2, 0).numpy()
    assert out.shape == ref.shape
    diff = np.abs(out.astype(np.int16) - ref)
    assert diff.max() <= 1 and diff.mean() < 0.3


def test_broadcast_to_dtype_keeps_the_no_mask_broadcast(tiny_model: Saom) -> None:
    _, dense = tiny_model.sam.prompt_encoder(
        points=(torch.zeros(5, 1, 2), torch.ones(5, 1, dtype=torch.int)), boxes=None, masks=None)
    assert dense.stride(0) == 0
    out = broadcast_to_dtype(dense, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.stride(0) == 0
    assert torch.equal(out, dense.to(torch.bfloat16))
    per_prompt = torch.randn(3, 4)
    assert broadcast_to_dtype(per_prompt, torch.bfloat16).stride(0) == 4


def refuse_real_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make building a Sam anywhere but on the meta device fail the test, so that a config asking
    for many GB is shown to be refused before any weight is allocated."""
    real = model_module._build_sam

    def meta_only(config: ModelConfig):
        assert torch.get_default_device().type == "meta", f"real weights built for {config}"
        return real(config)

    monkeypatch.setattr(model_module, "_build_sam", meta_only)


# Case -> how it changes the checkpoint dict, and what the message must name.
_MALFORMED_SAOM = {
    "state_dict a list": (lambda c: {**c, "state_dict": [1, 2]}, "'state_dict'"),
    "state_dict ints": (lambda c: {**c, "state_dict": {k: 1 for k in c["state_dict"]}},
                        "'state_dict'"),
    "state_dict int tensor": (lambda c: {**c, "state_dict": {
        **c["state_dict"], "sam.pixel_mean": torch.zeros(3, 1, 1, dtype=torch.int64)}},
        "floating-point"),
    "config a list": (lambda c: {**c, "config": [1, 2]}, "'config'"),
    "config text": (lambda c: {**c, "config": {**c["config"], "encoder_depth": "2"}},
                    "encoder_depth"),
    "config negative": (lambda c: {**c, "config": {**c["config"], "encoder_embed_dim": -8}},
                        "encoder_embed_dim"),
    "config zero patch": (lambda c: {**c, "config": {**c["config"], "patch_size": 0}},
                          "patch_size"),
    "config unknown field": (lambda c: {**c, "config": {**c["config"], "colour": 1}}, "colour"),
    "metadata a list": (lambda c: {**c, "metadata": [1, 2, 3]}, "'metadata'"),
    "class_names ints": (lambda c: {**c, "class_names": list(range(len(c["class_names"])))},
                         "'class_names'"),
    "class_names text": (lambda c: {**c, "class_names": "x" * len(c["class_names"])},
                         "'class_names'"),
    "no state_dict": (lambda c: {k: v for k, v in c.items() if k != "state_dict"}, "state_dict"),
}


@pytest.mark.parametrize("case", _MALFORMED_SAOM)
def test_malformed_saom_checkpoint_names_file_and_field(tiny_checkpoint: Path, case: str) -> None:
    change, named = _MALFORMED_SAOM[case]
    torch.save(change(torch.load(tiny_checkpoint, weights_only=True)), tiny_checkpoint)
    with pytest.raises(CheckpointError, match="malformed checkpoint") as err:
        load_model(tiny_checkpoint)
    assert str(tiny_checkpoint) in str(err.value) and named in str(err.value)


def test_official_file_with_a_non_tensor_is_refused(tiny_model: Saom, tmp_path: Path) -> None:
    state = tiny_model.sam.state_dict()
    state["mask_decoder.iou_token.weight"] = 1
    torch.save(state, tmp_path / "sam_vit_tiny.pth")
    with pytest.raises(CheckpointError, match=r"mask_decoder\.iou_token\.weight.*1") as err:
        load_model(tmp_path / "sam_vit_tiny.pth", model_type="tiny")
    assert str(tmp_path / "sam_vit_tiny.pth") in str(err.value)


def test_a_small_file_asking_for_a_huge_model_is_refused_before_building(
        tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    # ~200 GB of weights; the file holds only the class head.
    ckpt["config"].update(encoder_embed_dim=8192, encoder_depth=64, encoder_num_heads=64,
                          encoder_global_attn_indexes=[1])
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("class_")}
    torch.save(ckpt, tiny_checkpoint)
    refuse_real_builds(monkeypatch)
    with pytest.raises(CheckpointError, match="architecture mismatch: missing: ") as err:
        load_model(tiny_checkpoint)
    assert str(tiny_checkpoint) in str(err.value)
    assert "sam.image_encoder.blocks.63" in str(err.value) or "more)" in str(err.value)
