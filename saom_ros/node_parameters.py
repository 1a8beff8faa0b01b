"""segment_node's parameters: the table (name, default, descriptor), their checks, and the mapping
of engine parameters onto ``EverythingSettings`` fields.

The launch file derives its arguments from ``parameter_table()``, so a parameter added here is
a launch argument too. Engine parameters (``ENGINE_PARAMETERS``) may change while the node runs.
Those a checkpoint carries (``FROM_CHECKPOINT``) have no default: left unset, they take the
checkpoint's everything-mode settings (``everything_settings.settings_for``), else the generator's defaults.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from saom_ros.everything_settings import (PROMPT_STRATEGIES, RANGES, RUNTIME_FIELDS,
                                          EverythingSettings)
from saom_ros.input_qos import RELIABILITY_SETTINGS
from saom_ros.model_config import PRESETS

# Node parameter -> EverythingSettings field. These apply to the next frame when set at run time.
ENGINE_PARAMETERS = {
    "points_per_side": "points_per_side",
    "pred_iou_thresh": "pred_iou_thresh",
    "stability_score_thresh": "stability_score_thresh",
    "box_nms_thresh": "box_nms_thresh",
    "min_mask_area": "min_mask_region_area",
    "max_instances": "max_instances",
    "compile": "compile",
    "prompt_strategy": "prompt_strategy",
    "coarse_points_per_side": "coarse_points_per_side",
    "confident_iou_thresh": "confident_iou_thresh",
    "points_per_new_mask": "points_per_new_mask",
    "keyframe_interval": "keyframe_interval",
    "points_per_instance": "points_per_instance",
    "stream_stride": "stream_stride",
    "max_lost_fraction": "max_lost_fraction",
    "stream_confident_iou_thresh": "stream_confident_iou_thresh",
    "stream_points_per_new_mask": "stream_points_per_new_mask",
}
# Engine parameters without a default of their own: the checkpoint's value unless set.
FROM_CHECKPOINT = tuple(name for name, field in ENGINE_PARAMETERS.items()
                        if field not in RUNTIME_FIELDS)
MODEL_TYPES = ("auto", *PRESETS)
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _unit_range() -> FloatingPointRange:
    return FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)


def _int_range(low: int, high: int) -> IntegerRange:
    return IntegerRange(from_value=low, to_value=high, step=1)


def _engine_range(name: str) -> dict[str, list]:
    """The descriptor range of an engine parameter: its field's ``RANGES`` entry."""
    low, high = RANGES[ENGINE_PARAMETERS[name]]
    if isinstance(low, float):
        return {"floating_point_range": [FloatingPointRange(from_value=low, to_value=high,
                                                            step=0.0)]}
    return {"integer_range": [_int_range(low, high)]}


def _d(text: str, read_only: bool = False, **ranges: Any) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, read_only=read_only, **ranges)


def _engine_default(name: str) -> Any:
    """A FROM_CHECKPOINT parameter's type (declared unset), else EverythingSettings' default."""
    value = getattr(EverythingSettings(), ENGINE_PARAMETERS[name])
    if name not in FROM_CHECKPOINT:
        return value
    return {bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER, float: Parameter.Type.DOUBLE,
            str: Parameter.Type.STRING}[type(value)]


def parameter_table() -> list[tuple[str, Any, ParameterDescriptor]]:
    """Every parameter: name, default, descriptor. A default that is a ``Parameter.Type`` means
    "unset": the value comes from the checkpoint (see ``FROM_CHECKPOINT``)."""
    engine = _engine_default
    return [
        ("checkpoint", "", _d(
            "SAOM checkpoint or official sam_vit_*.pth; empty: the packaged saom_small.pt", True)),
        ("model_type", "auto", _d(
            f"architecture of an official SAM file: {', '.join(MODEL_TYPES)} (auto: from shapes)",
            True)),
        ("device", "auto", _d("auto, cpu, cuda or cuda:N (auto: cuda if available, else cpu)",
                              True)),
        ("points_per_side", engine("points_per_side"), _d(
            "prompt grid is points_per_side^2 points", **_engine_range("points_per_side"))),
        ("pred_iou_thresh", engine("pred_iou_thresh"), _d(
            "drop masks whose predicted IoU is lower", **_engine_range("pred_iou_thresh"))),
        ("stability_score_thresh", engine("stability_score_thresh"), _d(
            "drop masks whose stability score is lower",
            **_engine_range("stability_score_thresh"))),
        ("box_nms_thresh", engine("box_nms_thresh"), _d(
            "box IoU above which the lower-scoring mask is suppressed",
            **_engine_range("box_nms_thresh"))),
        ("min_mask_area", engine("min_mask_area"), _d(
            "pixels; smaller holes and islands are removed (0: off)",
            **_engine_range("min_mask_area"))),
        ("max_instances", engine("max_instances"), _d(
            "keep at most this many instances, highest predicted IoU first (0: all)",
            **_engine_range("max_instances"))),
        ("prompt_strategy", engine("prompt_strategy"), _d(
            f"which points prompt the decoder: {', '.join(PROMPT_STRATEGIES)} (grid: the full "
            "grid, exact; hierarchical: coarse grid, then the deepest full-grid points of new "
            "masks outside confident ones; streaming: previous "
            "instances' points plus part of the grid, keyframes)")),
        ("coarse_points_per_side", engine("coarse_points_per_side"), _d(
            "hierarchical: first-pass grid side (0: points_per_side // 2; at most "
            "points_per_side)",
            **_engine_range("coarse_points_per_side"))),
        ("confident_iou_thresh", engine("confident_iou_thresh"), _d(
            "hierarchical: predicted IoU from which a kept coarse mask skips the full-grid "
            "points it covers (0: every kept mask)", **_engine_range("confident_iou_thresh"))),
        ("points_per_new_mask", engine("points_per_new_mask"), _d(
            "hierarchical: full-grid points decoded inside each new coarse mask, the deepest "
            "first (0: all of them)", **_engine_range("points_per_new_mask"))),
        ("keyframe_interval", engine("keyframe_interval"), _d(
            "streaming: the full grid every N frames (1: every frame)",
            **_engine_range("keyframe_interval"))),
        ("points_per_instance", engine("points_per_instance"), _d(
            "streaming: points well inside each previous instance (besides the point that gave "
            "it; none where that point had found the instance again)",
            **_engine_range("points_per_instance"))),
        ("stream_stride", engine("stream_stride"), _d(
            "streaming: full-grid points outside the previous instances are decoded at this "
            "stride, one interleaved sub-grid per frame (then the full grid inside new masks)",
            **_engine_range("stream_stride"))),
        ("max_lost_fraction", engine("max_lost_fraction"), _d(
            "streaming: a keyframe at once when more than this fraction of the previous "
            "instances is lost", **_engine_range("max_lost_fraction"))),
        ("stream_confident_iou_thresh", engine("stream_confident_iou_thresh"), _d(
            "streaming: predicted IoU from which a kept mask of the first pass (previous "
            "instances' points, sub-grid) skips the full-grid points it covers (0: every kept "
            "mask)", **_engine_range("stream_confident_iou_thresh"))),
        ("stream_points_per_new_mask", engine("stream_points_per_new_mask"), _d(
            "streaming: points_per_new_mask for its second pass (0: all of them)",
            **_engine_range("stream_points_per_new_mask"))),
        ("compile", engine("compile"), _d(
            "torch.compile the image encoder at start-up (on the CPU the decoder too; on CUDA "
            "the decoder keeps its fused kernels, which were faster than compiling it)", True)),
        ("classes", "", _d("path of a YAML file holding the class names (classes: [A, B, ...] "
                           "or a bare list) overriding the checkpoint's (same count); empty: the "
                           "checkpoint's", True)),
        ("input_reliability", "auto", _d(
            "input QoS reliability: auto (reliable if every publisher is, else best_effort), "
            "reliable or best_effort", True)),
        ("input_depth", 5, _d(
            "input QoS history depth: frames DDS holds until the node's callback takes them "
            "(inference still takes only the newest)", True,
            integer_range=[_int_range(1, 1000)])),
        ("input_timeout", 5.0, _d(
            "seconds without an input image before /diagnostics says ERROR (WARN as soon as a "
            "report window passes without one)", True,
            floating_point_range=[FloatingPointRange(from_value=1.0, to_value=3600.0, step=0.0)])),
        ("use_compressed", False, _d(
            "subscribe to image/compressed (jpeg/png) instead of image", True)),
        ("publish_overlay", False, _d("publish ~/overlay (rgb8) for RViz", True)),
        ("use_depth", False, _d(
            "subscribe to depth (16UC1 mm or 32FC1 m, registered to the colour image) and "
            "camera_info; publish ~/detections_3d", True)),
        ("depth_sync_tolerance", 0.02, _d(
            "seconds; a depth image pairs with the colour frame of the nearest stamp within this",
            True, floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0,
                                                           step=0.0)])),
        ("publish_points", False, _d(
            "with use_depth: publish ~/points (PointCloud2 x, y, z, instance, class)", True)),
        ("track", True, _d(
            "instance ids are track ids that persist across frames (false: index + 1 per frame)",
            True)),
        ("track_iou_thresh", 0.3, _d(
            "lowest mask IoU with a track's last footprint that continues the track", True,
            floating_point_range=[_unit_range()])),
        ("track_max_missed", 5, _d(
            "frames a track lost from view is remembered (and keeps its id if it returns)", True,
            integer_range=[_int_range(0, 1000)])),
        ("track_id_reuse_delay", 300, _d(
            "frames after a track ended before its id may be given to a new object", True,
            integer_range=[_int_range(0, 1_000_000)])),
        ("autostart", True, _d(
            "configure and activate at start-up; false: wait unconfigured for a lifecycle "
            "manager (<node>/change_state)", True)),
    ]


def validate(param: Parameter) -> Optional[str]:
    """Why ``param`` is not acceptable (None if it is); ranges and types rclpy checks itself."""
    value = param.value
    if param.name == "device" and not _DEVICE_RE.fullmatch(value):
        return f"device {value!r} must be auto, cpu, cuda or cuda:N"
    if param.name == "model_type" and value not in MODEL_TYPES:
        return f"model_type {value!r} must be one of {', '.join(MODEL_TYPES)}"
    if param.name == "prompt_strategy" and value is not None and value not in PROMPT_STRATEGIES:
        return f"prompt_strategy {value!r} must be one of {', '.join(PROMPT_STRATEGIES)}"
    if param.name == "input_reliability" and value not in RELIABILITY_SETTINGS:
        return f"input_reliability {value!r} must be one of {', '.join(RELIABILITY_SETTINGS)}"
    if param.name == "track_iou_thresh" and value <= 0.0:
        return "track_iou_thresh must be above 0 (at 0 any two masks would continue a track)"
    return None


def launch_value(name: str, text: str, default: Any) -> Any:
    """A launch argument's text as the parameter's type (``default``: its table default);
    ValueError naming the argument if it is not one."""
    kind = type(default) if not isinstance(default, Parameter.Type) else {
        Parameter.Type.BOOL: bool, Parameter.Type.INTEGER: int, Parameter.Type.DOUBLE: float,
        Parameter.Type.STRING: str}[default]
    try:
        if kind is bool:
            return {"true": True, "false": False}[text.strip().lower()]
        return kind(text)
    except (KeyError, ValueError):
        raise ValueError(f"launch argument {name}:={text!r} must be of type {kind.__name__}"
                         + (" (true or false)" if kind is bool else "")) from None


def engine_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The engine parameters among ``values`` that are set (not None), by EverythingSettings field."""
    return {field: values[name] for name, field in ENGINE_PARAMETERS.items()
            if values.get(name) is not None}
