"""Tests for saom_ros.full_size: the channels-last full-resolution work equals segment_anything's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score
from torch.nn import functional as F

from saom_ros import full_size, full_size_cpu
from saom_ros.full_size import (
    CHUNK_BYTES, boxes_of, chunks, label_images, remove_small, remove_small_regions, stability_scores,
    upsample)


def _logits(n: int = 5, size: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    x = F.avg_pool2d(torch.randn(n, 1, 4 * size, 4 * size) * 20, 4)[:, 0]
    x[-1] = -5.0  # an empty mask
    return x


@pytest.mark.parametrize("input_hw, orig_hw", [((64, 64), (64, 64)), ((48, 64), (90, 120))])
def test_upsample_is_sams_postprocessing(input_hw: tuple, orig_hw: tuple) -> None:
    low = _logits()
    ref = F.interpolate(low[:, None], (64, 64), mode="bilinear", align_corners=False)
    ref = F.interpolate(ref[..., :input_hw[0], :input_hw[1]], orig_hw, mode="bilinear",
                        align_corners=False)[:, 0]
    ours = upsample(low, 4, input_hw, orig_hw)
    assert ours.shape == orig_hw + (5,)
    torch.testing.assert_close(ours.permute(2, 0, 1), ref, atol=1e-5, rtol=1e-5)
    assert upsample(low[:0], 4, input_hw, orig_hw).shape == orig_hw + (0,)


@pytest.mark.parametrize("n, hw", [(5, (64, 64)), (8, (64, 64)), (24, (64, 64)), (8, (60, 63))])
def test_stability_and_boxes_match_segment_anything(n: int, hw: tuple) -> None:
    full = upsample(_logits(n), 4, hw, hw)
    planes = full.permute(2, 0, 1)
    torch.testing.assert_close(stability_scores(full, 0.0, 1.0, (0, 1)),
                               calculate_stability_score(planes, 0.0, 1.0), equal_nan=True)
    torch.testing.assert_close(boxes_of(full, 0.0), batched_mask_to_box(planes > 0).float())


@pytest.mark.parametrize("input_hw, orig_hw", [((64, 64), (64, 64)), ((48, 64), (90, 120))])
def test_chunked_full_size_work_is_the_compiled_cpu_pass(monkeypatch: pytest.MonkeyPatch,
                                                         input_hw: tuple, orig_hw: tuple) -> None:
    # The path devices other than the CPU take, here on the CPU against full_size_cpu's pass
    # (itself tested against the generator), in chunks of 3 masks.
    low = _logits(8) * 0.3  # soft edges: stability scores between 0 and 1
    mask_bytes = 4 * (64 * 64 + orig_hw[0] * orig_hw[1])  # logits at the input step, full size
    monkeypatch.setattr(full_size, "CHUNK_BYTES", 3 * mask_bytes)
    assert len(list(full_size.logit_chunks(low, 4, orig_hw))) == 3
    stability, boxes = full_size.stability_and_boxes(low, 4, input_hw, orig_hw, 0.0, 1.0)
    expected = full_size_cpu.stability_and_boxes(low, 4, input_hw, orig_hw, 0.0, 1.0)
    torch.testing.assert_close(stability, expected[0], equal_nan=True)
    torch.testing.assert_close(boxes, expected[1].float())
    masks, boxes = full_size.masks_and_boxes(low, 4, input_hw, orig_hw, 0.0)
    expected = full_size_cpu.masks_and_boxes(low, 4, input_hw, orig_hw, 0.0)
    assert torch.equal(masks, expected[0])
    torch.testing.assert_close(boxes, expected[1].float())


def test_chunks_cover_everything_once_within_the_budget() -> None:
    assert [(s.start, s.stop) for s in chunks(70, CHUNK_BYTES // 32)] == \
        [(0, 32), (32, 64), (64, 70)]
    assert [(s.start, s.stop) for s in chunks(3, 2 * CHUNK_BYTES)] == [(0, 1), (1, 2), (2, 3)]
    assert [(s.start, s.stop) for s in chunks(0, 1)] == [(0, 0)]


def test_label_images_give_each_pixel_to_the_first_mask() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2], masks[1, 1:3] = True, True
    for boxes in (None, batched_mask_to_box(masks).numpy()):
        inst, sem = label_images(masks, np.array([7, 3]), boxes)
        assert inst[:, 0].tolist() == [1, 1, 2, 0] and sem[:, 0].tolist() == [7, 7, 3, 0]
        assert inst.dtype == np.uint16 and sem.dtype == np.uint16


def test_the_gpus_label_argmax_is_the_cpus_painting_inside_boxes() -> None:
    masks = _small_region_masks(40, 56, seed=5)  # overlapping, cut by the edges, one empty
    first = full_size._first_cover(masks).numpy()
    np.testing.assert_array_equal(first, full_size._painted(masks.numpy()))
    np.testing.assert_array_equal(
        first, full_size._painted(masks.numpy(), batched_mask_to_box(masks).numpy()))


def _small_region_masks(h: int, w: int, seed: int) -> torch.Tensor:
    """Noisy blobs with holes and specks, some cut by the image edge, one spanning the image's
    width, one empty: the cases where a region or hole reaches out of a mask's box."""
    rng = np.random.default_rng(seed)
    noise = F.avg_pool2d(torch.as_tensor(rng.normal(size=(12, h + 2, w + 2)),
                                         dtype=torch.float32), 3, 1) > -0.3
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = []
    for k in range(12):
        cy, cx = rng.integers(-4, h + 4), rng.integers(-4, w + 4)
        ry, rx = rng.integers(3, h // 2), rng.integers(3, w // 2)
        masks.append(noise[k] & (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1))
    band = torch.zeros(h, w, dtype=torch.bool)
    band[2:h - 3] = True
    band[h // 2, 5:8] = False  # a small hole
    masks += [band, torch.zeros(h, w, dtype=torch.bool)]
    return torch.stack(masks)


@pytest.mark.parametrize("area", [2, 5, 12, 30, 70])
def test_remove_small_is_the_generators_postprocessing(area: int) -> None:
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import MaskData, mask_to_rle_pytorch, rle_to_mask

    masks = _small_region_masks(40, 56, seed=area)
    iou = torch.linspace(1.0, 0.5, len(masks))
    data = MaskData(rles=mask_to_rle_pytorch(masks), boxes=batched_mask_to_box(masks).float(),
                    iou_preds=iou)
    ref = SamAutomaticMaskGenerator.postprocess_small_regions(data, area, 0.9)
    before = masks.clone()
    ours, boxes, keep = remove_small(masks, batched_mask_to_box(masks), iou, area, 0.9)
    assert torch.equal(masks, before)  # the input is left as it was
    # The generator filters in NMS order; it sorts by IoU only when it packs its records.
    order = torch.argsort(ref["iou_preds"], descending=True, stable=True)
    expected = np.stack([rle_to_mask(ref["rles"][i]) for i in order.tolist()])
    assert len(ours) >= 8 and (ours.numpy() != masks[keep].numpy()).any()  # something changed
    np.testing.assert_array_equal(ours.numpy(), expected)
    np.testing.assert_array_equal(iou[keep].numpy(), ref["iou_preds"][order].numpy())
    np.testing.assert_array_equal(boxes.numpy(), ref["boxes"][order].numpy())


@pytest.mark.parametrize("area", [1, 3, 8, 40, 500])
def test_remove_small_regions_is_segment_anythings(area: int) -> None:
    from segment_anything.utils.amg import remove_small_regions as reference

    masks = _small_region_masks(40, 56, seed=area).numpy()
    specks = np.zeros((40, 56), bool)
    specks[3, 3] = specks[30, 40:42] = True  # every region small: the largest stays
    speck = np.zeros((40, 56), bool)
    speck[7, 9] = True  # one region, small: it stays, though changed
    for mask in [*masks, specks, speck, ~speck]:
        for mode in ("holes", "islands"):
            ours, changed = remove_small_regions(mask, area, holes=mode == "holes")
            ref, ref_changed = reference(mask, area, mode)
            np.testing.assert_array_equal(ours, ref)
            assert changed == ref_changed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_label_images_on_a_gpu_are_the_cpus() -> None:
    masks = _small_region_masks(40, 56, seed=3)  # overlapping, cut by the edges, one empty
    class_ids = np.arange(len(masks)) % 4 + 1
    for cpu, gpu in zip(label_images(masks, class_ids),
                        label_images(masks.cuda(), class_ids)):
        np.testing.assert_array_equal(gpu, cpu)
        assert gpu.dtype == np.uint16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_remove_small_of_gpu_masks_gives_host_masks_and_device_indices() -> None:
    masks = _small_region_masks(40, 56, seed=12)
    iou = torch.linspace(1.0, 0.5, len(masks))
    cpu = remove_small(masks, batched_mask_to_box(masks), iou, 12, 0.9)
    gpu = remove_small(masks.cuda(), batched_mask_to_box(masks).cuda(), iou.cuda(), 12, 0.9)
    assert gpu[0].device.type == "cpu" and gpu[1].is_cuda and gpu[2].is_cuda
    for ours, expected in zip(gpu, cpu):
        torch.testing.assert_close(ours.cpu(), expected)
