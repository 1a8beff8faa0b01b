"""Everything-mode settings: the generator's defaults, what a checkpoint carries, and what is given.

Imports neither torch nor segment_anything, so that the node's parameter table (and with it the
launch file) loads without them.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import TYPE_CHECKING, Any

from saom_ros.image_decode import MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    from saom_ros.model import Saom

PROMPT_STRATEGIES = ("grid", "hierarchical", "streaming")


@dataclasses.dataclass
class EverythingSettings:
    """Everything-mode settings; defaults are SamAutomaticMaskGenerator's."""

    points_per_side: int = 32
    # Prompts per decoder pass; 0 = by device: 64 on the CPU (the per-batch image-side tensors
    # then stay in cache: 25% faster than 256 for the tiny model), 256 elsewhere.
    points_per_batch: int = 0
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    max_instances: int = 0  # 0 = all
    mask_threshold: float = 0.0
    max_image_pixels: int = MAX_IMAGE_PIXELS  # images are also refused before decoding
    cuda_dtype: str = "bfloat16"  # compute dtype on CUDA: bfloat16, float16 or float32
    compile: bool = False  # torch.compile the image encoder (on the CPU the decoder too)
    # Which points prompt the decoder (PROMPT_STRATEGIES): grid = the generator's, exact.
    prompt_strategy: str = "grid"
    # hierarchical: the first, coarse grid; 0 = points_per_side // 2 (a quarter of the points:
    # where no coarse mask reaches, the full grid is not decoded, so the coarse spacing bounds
    # the smallest object found; TinySAM's 1/16 missed objects of SAOM-small) ...
    coarse_points_per_side: int = 0
    # ... and the predicted IoU from which a kept coarse mask is confident: full-grid points
    # inside a confident mask are not decoded. 0 = every kept mask. Inside a kept mask of low
    # predicted IoU the grid often finds better masks of the objects there (SAOM-small over
    # four held-out seeds of 160 scenes, when the second pass also decoded each new mask's
    # deepest pixel: mIoU delta to the grid -0.93 points at 0.5, -1.35 at 0.4 with 5% fewer
    # points decoded).
    confident_iou_thresh: float = 0.5
    # ... and the full-grid points decoded inside each new coarse mask (one that lies mostly
    # outside the confident ones: second_pass.new_masks), the deepest first; 0 = all of them.
    # Inside a large new mask a dozen grid points mostly give its object again. The speed-quality
    # knob of hierarchical (SAOM-small: the README's parameter table) ...
    points_per_new_mask: int = 2
    # streaming: the full grid every N frames ...
    keyframe_interval: int = 10
    # ... up to N points well inside each previous instance, besides the point that gave it
    # (none where that point had found the instance again: Instances.prompt_repeated) ...
    points_per_instance: int = 1
    # ... and the full grid's points where no previous instance is, at this stride: each frame
    # one of the stride^2 interleaved sub-grids (then, as in hierarchical, the full-grid points
    # that these prompts' masks leave unexplained; so the sub-grid only has to find objects that
    # no mask reaches, and the keyframe finds those too) ...
    stream_stride: int = 8
    # ... and a keyframe at once when more than this fraction of the previous instances is lost
    # (no new instance's footprint overlaps its own by everything.LOST_IOU; the frame is redone
    # with the full grid, and the keyframe interval goes on from the last keyframe) ...
    max_lost_fraction: float = 0.5
    # ... and confident_iou_thresh for the masks of these prompts: one or two prompts per
    # instance give fewer alternatives than a coarse grid, so a tracked mask of low predicted
    # IoU (often a part) still gets the full grid inside it (SAOM-small at 0: 1 mIoU point lost),
    # every other frame: a mask tracked from an instance that a search gave counts as confident.
    stream_confident_iou_thresh: float = 0.5
    # ... and points_per_new_mask for its second pass; 0 = all: with one or two first-pass points
    # per tracked instance a limit costs more quality than in hierarchical (README).
    stream_points_per_new_mask: int = 0

    def __post_init__(self) -> None:
        """Every field of its default's type (numpy numbers too) and inside ``RANGES``: made
        here directly or by ``dataclasses.replace``, bad settings fail now, naming the field,
        instead of deep inside the next frame. ValueError otherwise."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, _checked(field.name, getattr(self, field.name),
                                               field.default, "everything-mode settings"))
        if self.prompt_strategy not in PROMPT_STRATEGIES:
            raise ValueError(f"prompt_strategy must be one of {', '.join(PROMPT_STRATEGIES)}, "
                             f"got {self.prompt_strategy!r}")


# Inclusive ranges of the numeric fields, checked whenever settings are made (a node parameter,
# --everything, a checkpoint's settings, code): outside them the engine fails or does nothing
# useful (a grid of 0 points divides by zero). A threshold of 0 is off.
RANGES: dict[str, tuple[float, float]] = {
    "points_per_side": (1, 256),
    "points_per_batch": (0, 1 << 20),
    "max_image_pixels": (1, 1 << 40),
    "pred_iou_thresh": (0.0, 1.0),
    "stability_score_thresh": (0.0, 1.0),
    "box_nms_thresh": (0.0, 1.0),
    "min_mask_region_area": (0, 2**31 - 1),
    "max_instances": (0, 65535),  # the instance image is uint16
    "coarse_points_per_side": (0, 256),
    "confident_iou_thresh": (0.0, 1.0),
    "points_per_new_mask": (0, 65536),
    "keyframe_interval": (1, 1_000_000),
    "points_per_instance": (0, 16),
    "stream_stride": (1, 16),
    "max_lost_fraction": (0.0, 1.0),
    "stream_confident_iou_thresh": (0.0, 1.0),
    "stream_points_per_new_mask": (0, 65536),
}

# Fields that change only speed and memory, never which masks come out: checkpoints do not carry
# them, so every machine keeps its own.
RUNTIME_FIELDS = frozenset({"points_per_batch", "max_image_pixels", "cuda_dtype", "compile"})


def _checked(name: str, value: Any, default: Any, source: str) -> Any:
    """``value`` as the type of the field's default (an int is a valid float), inside the
    field's RANGES; else ValueError."""
    kind = type(default)
    # numpy's numbers count as Python's (a bool is no number here); an integer is a valid float.
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    elif kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ValueError(f"{source}: {name} must be of type {kind.__name__}, got {value!r}")
    low, high = RANGES.get(name, (value, value))
    if not low <= value <= high:
        raise ValueError(f"{source}: {name} must be within {low}..{high}, got {value!r}")
    return value


def settings_for(model: Saom, **explicit: Any) -> EverythingSettings:
    """Generator defaults, then the settings the model's checkpoint carries (``model.everything``),
    then the ``explicit`` ones (a None value counts as not given).

    Unknown field names, values of the wrong type and values outside RANGES raise ValueError
    naming their source.
    """
    defaults = dataclasses.asdict(EverythingSettings())
    values: dict[str, Any] = {}
    for source, given in (("the checkpoint's everything-mode settings", model.everything),
                          ("everything-mode settings",
                           {k: v for k, v in explicit.items() if v is not None})):
        for name, value in given.items():
            if name not in defaults:
                raise ValueError(f"{source}: unknown setting {name!r}; known: "
                                 f"{', '.join(defaults)}")
            values[name] = _checked(name, value, defaults[name], source)
    return EverythingSettings(**{**defaults, **values})


def carried_settings(settings: EverythingSettings) -> dict[str, Any]:
    """What a checkpoint carries of ``settings``: every field but the RUNTIME_FIELDS."""
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in RUNTIME_FIELDS}
