"""Candidate decoding on its own: the edge cases the prompt strategies reach."""
import numpy as np
import pytest
import torch

from saom_ros.candidates import Frame, _queued, decode_candidates
from saom_ros.everything import EverythingSettings
from saom_ros.model import Saom

from conftest import BENCH


def _frame(model: Saom, image: np.ndarray) -> Frame:
    x, input_hw = model.preprocess(image)
    with torch.inference_mode():
        embedding = model.embed(x)
    cfg = model.config
    return Frame(embedding, image.shape[:2], input_hw, cfg.img_size, cfg.patch_size)


def test_no_points_give_no_candidates(tiny_model: Saom) -> None:
    """Hierarchical prompts leave no point when confident masks cover the whole grid."""
    frame = _frame(tiny_model, np.full((48, 64, 3), 90, np.uint8))
    settings = EverythingSettings(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    with torch.inference_mode():
        empty = decode_candidates(tiny_model, frame, np.zeros((0, 2)), settings,
                                  lambda name: getattr(tiny_model, name))
        one = decode_candidates(tiny_model, frame, np.array([[10.0, 20.0]]), settings,
                                lambda name: getattr(tiny_model, name))
    assert len(empty) == 0 and len(one) > 0
    assert empty.logits.shape[1:] == one.logits.shape[1:]
    assert empty.cls.shape[1:] == one.cls.shape[1:]
    assert empty.point.shape == (0, 2)


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_queued_items_come_in_order_with_the_next_ones_made(ahead) -> None:
    made = []

    def items():
        for i in range(5):
            made.append(i)
            yield i
    for i in _queued(items(), ahead):
        assert made == list(range(min(5, i + 1 + ahead)))


def _generator_filtered(model: Saom, image: np.ndarray, points: np.ndarray, iou_thresh: float,
                        stab_thresh: float, offset: float) -> dict[int, np.ndarray]:
    """SamAutomaticMaskGenerator's per-mask filters as it applies them (``_process_batch``),
    with segment_anything's own code: every mask upscaled to full size, its stability score
    computed there, no pre-screen. Prompt index -> sorted stability scores of its kept masks."""
    from segment_anything import SamPredictor
    from segment_anything.utils.amg import calculate_stability_score

    predictor = SamPredictor(model.sam)
    predictor.set_image(image)
    coords = torch.as_tensor(predictor.transform.apply_coords(points, image.shape[:2]),
                             dtype=torch.float32)
    with torch.inference_mode():
        masks, iou, _ = predictor.predict_torch(
            coords[:, None], torch.ones(len(points), 1, dtype=torch.int),
            multimask_output=True, return_logits=True)
        stab = calculate_stability_score(masks.flatten(0, 1), model.sam.mask_threshold, offset)
    iou, stab = iou.flatten().numpy(), stab.numpy()
    keep = (iou > iou_thresh if iou_thresh > 0 else True) & (stab >= stab_thresh)
    prompt = np.repeat(np.arange(len(points)), masks.shape[1])
    return {int(p): np.sort(stab[keep & (prompt == p)]) for p in np.unique(prompt[keep])}


def test_grid_candidates_are_the_generators_with_stability_at_full_size(
        shapes_model: Saom) -> None:
    """README: the grid strategy is exact, SamAutomaticMaskGenerator's masks. Each mask passes
    or fails the stability filter on its full-size score whatever its low-res score was: the
    threshold is put between observed full-size scores, so masks lie just either side of it."""
    from segment_anything.utils.amg import build_all_layer_point_grids

    image = BENCH.synthetic_scene(96, 128, 7)[0]
    points = build_all_layer_point_grids(8, 0, 1)[0] * np.array(image.shape[1::-1])
    offset = 1.0
    every = _generator_filtered(shapes_model, image, points, 0.0, 1e-9, offset)
    scores = np.unique(np.concatenate(list(every.values())))
    assert len(scores) > 50
    frame = _frame(shapes_model, image)
    checked = 0
    for q in np.linspace(0.1, 0.9, 9):  # thresholds halfway between two neighbouring scores
        i = int(q * (len(scores) - 1))
        thresh = float(scores[i] + scores[i + 1]) / 2
        settings = EverythingSettings(pred_iou_thresh=0.0, stability_score_thresh=thresh,
                                      stability_score_offset=offset)
        with torch.inference_mode():
            cand = decode_candidates(shapes_model, frame, points, settings,
                                     lambda name: getattr(shapes_model, name))
        ref = _generator_filtered(shapes_model, image, points, 0.0, thresh, offset)
        ours = {int(p): np.sort(cand.stability[cand.prompt == p].numpy())
                for p in cand.prompt.unique()}
        assert ours.keys() == ref.keys(), thresh
        for p in ref:
            np.testing.assert_allclose(ours[p], ref[p], atol=1e-6, err_msg=f"{thresh} {p}")
        checked += sum(map(len, ref.values()))
    assert checked > 100
