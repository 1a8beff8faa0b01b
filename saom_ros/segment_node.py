"""segment_node: camera images in, class-labelled whole-object instances out (vision_msgs).

A thin rclpy node: parameters, QoS, callbacks. Image conversion lives in ``image_codec``, results ->
messages in ``messages``, the model in ``model``/``everything``. Inference runs on a worker thread
fed by a one-slot buffer, so the subscription callback never waits for the model and a frame that
arrives while another waits unprocessed replaces it (counted as dropped): latency stays flat.
"""
from __future__ import annotations

import dataclasses
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, LabelInfo

from saom_ros import image_codec, messages
from saom_ros.classes import load_class_file
from saom_ros.everything import EverythingEngine, EverythingSettings
from saom_ros.model import PRESETS, CheckpointError, load_model

NODE_NAME = "segment_node"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "data" / "saom_small.pt"
# Node parameter -> EverythingSettings field. These apply to the next frame when set at run time.
ENGINE_PARAMETERS = {
    "points_per_side": "points_per_side",
    "pred_iou_thresh": "pred_iou_thresh",
    "stability_score_thresh": "stability_score_thresh",
    "box_nms_thresh": "box_nms_thresh",
    "min_mask_area": "min_mask_region_area",
    "max_instances": "max_instances",
    "compile": "compile",
}
RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
MODEL_TYPES = ("auto", *PRESETS)
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
_WARN_EVERY_S = 5.0


class StartupError(RuntimeError):
    """The node cannot start; the message says why (a missing file, an unavailable device...)."""


def _unit_range() -> FloatingPointRange:
    return FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)


def _int_range(low: int, high: int) -> IntegerRange:
    return IntegerRange(from_value=low, to_value=high, step=1)


def parameter_table() -> list[tuple[str, Any, ParameterDescriptor]]:
    """Every parameter: name, default, descriptor. Engine defaults come from EverythingSettings."""
    engine = EverythingSettings()

    def d(text: str, read_only: bool = False, **ranges: Any) -> ParameterDescriptor:
        return ParameterDescriptor(description=text, read_only=read_only, **ranges)

    return [
        ("checkpoint", str(DEFAULT_CHECKPOINT), d(
            "SAOM checkpoint or official sam_vit_*.pth; empty: the packaged saom_small.pt", True)),
        ("model_type", "auto", d(
            f"architecture of an official SAM file: {', '.join(MODEL_TYPES)} (auto: from shapes)",
            True)),
        ("device", "auto", d("auto, cpu, cuda or cuda:N (auto: cuda if available, else cpu)",
                             True)),
        ("points_per_side", engine.points_per_side, d(
            "prompt grid is points_per_side^2 points", integer_range=[_int_range(1, 256)])),
        ("pred_iou_thresh", engine.pred_iou_thresh, d(
            "drop masks whose predicted IoU is lower", floating_point_range=[_unit_range()])),
        ("stability_score_thresh", engine.stability_score_thresh, d(
            "drop masks whose stability score is lower", floating_point_range=[_unit_range()])),
        ("box_nms_thresh", engine.box_nms_thresh, d(
            "box IoU above which the lower-scoring mask is suppressed",
            floating_point_range=[_unit_range()])),
        ("min_mask_area", engine.min_mask_region_area, d(
            "pixels; smaller holes and islands are removed (0: off)",
            integer_range=[_int_range(0, 2**31 - 1)])),
        ("max_instances", engine.max_instances, d(
            "keep at most this many best-scoring instances (0: all)",
            integer_range=[_int_range(0, 65535)])),
        ("compile", engine.compile, d(
            "torch.compile encoder and decoder (CUDA: ~2.4x faster per frame after a slow first "
            "frame)", True)),
        ("classes", "", d("YAML class-name list overriding the checkpoint's names "
                          "(same count); empty: the checkpoint's", True)),
        ("input_reliability", "best_effort", d(
            "input QoS reliability: best_effort (matches any camera) or reliable", True)),
        ("input_depth", 1, d("input QoS history depth", True, integer_range=[_int_range(1, 1000)])),
        ("use_compressed", False, d(
            "subscribe to image/compressed (jpeg/png) instead of image", True)),
        ("publish_overlay", False, d("publish ~/overlay (rgb8) for RViz", True)),
    ]


def validate(param: Parameter) -> Optional[str]:
    """Why ``param`` is not acceptable (None if it is); ranges and types rclpy checks itself."""
    value = param.value
    if param.name == "device" and not _DEVICE_RE.fullmatch(value):
        return f"device {value!r} must be auto, cpu, cuda or cuda:N"
    if param.name == "model_type" and value not in MODEL_TYPES:
        return f"model_type {value!r} must be one of {', '.join(MODEL_TYPES)}"
    if param.name == "input_reliability" and value not in RELIABILITY:
        return f"input_reliability {value!r} must be one of {', '.join(RELIABILITY)}"
    return None


def resolve_device(spec: str) -> torch.device:
    """The torch device for a ``device`` parameter; StartupError if CUDA is asked for but absent."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StartupError(f"device {spec!r} requested but CUDA is not available on this "
                               "machine (torch.cuda.is_available() is False); use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise StartupError(f"device {spec!r} requested but only {count} CUDA device(s) exist")
    return device


class LatestFrame:
    """A one-slot buffer: ``put`` never blocks and replaces a frame nobody took (a drop)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            self.dropped += self._item is not None
            self._item = item
            self._cond.notify()

    def take(self) -> Any:
        """The newest item, waiting for one; None once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed)
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclasses.dataclass
class _Stats:
    """Counts since start and per-frame times since the last /diagnostics report."""

    received: int = 0
    processed: int = 0
    malformed: int = 0
    window_processed: int = 0
    window_malformed: int = 0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    inference_ms: list[float] = dataclasses.field(default_factory=list)
    frame_age_ms: float = float("nan")

    def next_window(self) -> "_Stats":
        """A copy of these stats, and reset the per-window part."""
        snapshot = dataclasses.replace(self)
        self.window_processed = self.window_malformed = 0
        self.latencies_ms, self.inference_ms = [], []
        return snapshot


class SegmentNode(Node):
    """Everything-mode SAOM segmentation of one camera stream."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._engine: Optional[EverythingEngine] = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.declare_parameters("", parameter_table())
        p = {name: self.get_parameter(name).value for name, _, _ in parameter_table()}

        self.device = resolve_device(p["device"])
        checkpoint = Path(p["checkpoint"] or DEFAULT_CHECKPOINT)
        if not checkpoint.is_file():
            hint = (" (the packaged default model is not installed; set the checkpoint parameter)"
                    if checkpoint == DEFAULT_CHECKPOINT else "")
            raise StartupError(f"checkpoint file {checkpoint} does not exist{hint}")
        try:
            model = load_model(checkpoint, None if p["model_type"] == "auto" else p["model_type"],
                               self.device)
        except CheckpointError as err:
            raise StartupError(str(err)) from None
        self.class_names = model.class_names
        if p["classes"]:
            try:
                self.class_names = load_class_file(p["classes"])
            except ValueError as err:
                raise StartupError(str(err)) from None
            if len(self.class_names) != len(model.class_names):
                raise StartupError(f"class file {p['classes']} names {len(self.class_names)} "
                                   f"classes but {checkpoint} has {len(model.class_names)}")
        settings = dataclasses.replace(
            EverythingSettings(), **{field: p[name] for name, field in ENGINE_PARAMETERS.items()})
        self._engine = EverythingEngine(model, settings, self.device)

        out_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self._det_pub = self.create_publisher(Detection2DArray, "~/detections", out_qos)
        self._inst_pub = self.create_publisher(Image, "~/instances", out_qos)
        self._sem_pub = self.create_publisher(Image, "~/semantic", out_qos)
        self._overlay_pub = (self.create_publisher(Image, "~/overlay", out_qos)
                             if p["publish_overlay"] else None)
        self._label_pub = self.create_publisher(LabelInfo, "~/label_info", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._publish_label_info()

        self._stats = _Stats()
        self._stats_lock = threading.Lock()
        self._frames = LatestFrame()
        self._last_report = time.monotonic()
        msg_type, topic, decode = (
            (CompressedImage, "image/compressed", image_codec.compressed_to_rgb)
            if p["use_compressed"] else (Image, "image", image_codec.image_to_rgb))
        self._decode: Callable[[Any], Any] = decode
        in_qos = QoSProfile(depth=p["input_depth"], history=HistoryPolicy.KEEP_LAST,
                            reliability=RELIABILITY[p["input_reliability"]])
        self._sub = self.create_subscription(msg_type, topic, self._on_image, in_qos)
        self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="saom_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"segmenting {self._sub.topic_name} ({msg_type.__name__}) with {checkpoint} "
            f"({len(self.class_names)} classes) on {self.device}; image conversion: "
            f"{image_codec.backend()}")

    # --- parameters -------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            reason = validate(param)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        changes = {ENGINE_PARAMETERS[p.name]: p.value
                   for p in params if p.name in ENGINE_PARAMETERS}
        if self._engine is not None and changes:  # None while parameters are being declared
            try:
                self._engine.settings = dataclasses.replace(self._engine.settings, **changes)
            except ValueError as err:  # the engine's own checks, if any
                return SetParametersResult(successful=False, reason=str(err))
            if "pred_iou_thresh" in changes:
                self._publish_label_info(changes["pred_iou_thresh"])
        return SetParametersResult(successful=True)

    def _publish_label_info(self, threshold: Optional[float] = None) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        threshold = self._engine.settings.pred_iou_thresh if threshold is None else threshold
        self._label_pub.publish(messages.label_info(self.class_names, header, threshold))

    # --- images -----------------------------------------------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        with self._stats_lock:
            self._stats.received += 1
        self._frames.put((msg, time.monotonic()))

    def _work(self) -> None:
        while (item := self._frames.take()) is not None:
            msg, received = item
            try:
                self._process(msg, received)
            except ValueError as err:  # ImageDecodeError, or the engine refusing the image
                with self._stats_lock:
                    self._stats.malformed += 1
                    self._stats.window_malformed += 1
                self.get_logger().warning(
                    f"skipped image (frame_id {msg.header.frame_id!r}, stamp "
                    f"{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}): {err}",
                    throttle_duration_sec=_WARN_EVERY_S)
            except Exception as err:  # keep serving the next frame whatever went wrong
                if self._frames.closed:  # publishers may be gone while shutting down
                    return
                self.get_logger().error(f"processing failed: {type(err).__name__}: {err}",
                                        throttle_duration_sec=_WARN_EVERY_S)

    def _process(self, msg: Image | CompressedImage, received: float) -> None:
        rgb = self._decode(msg)
        start = time.monotonic()
        instances = self._engine(rgb)
        inference_ms = (time.monotonic() - start) * 1e3
        header = msg.header
        self._det_pub.publish(messages.detections(instances, header))
        self._inst_pub.publish(messages.label_image(instances.instance_image, header))
        self._sem_pub.publish(messages.label_image(instances.semantic_image, header))
        if self._overlay_pub is not None:
            self._overlay_pub.publish(image_codec.array_to_image(
                messages.overlay(rgb, instances, self.class_names), "rgb8", header))
        age_ns = self.get_clock().now().nanoseconds - Time.from_msg(header.stamp).nanoseconds
        with self._stats_lock:
            self._stats.processed += 1
            self._stats.window_processed += 1
            self._stats.latencies_ms.append((time.monotonic() - received) * 1e3)
            self._stats.inference_ms.append(inference_ms)
            self._stats.frame_age_ms = age_ns / 1e6

    # --- diagnostics ------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._stats_lock:
            stats = self._stats.next_window()
        elapsed, self._last_report = now - self._last_report, now
        level, text = DiagnosticStatus.OK, "ok"
        if stats.window_malformed:
            level = DiagnosticStatus.WARN
            text = f"{stats.window_malformed} malformed image(s) skipped"
        elif not stats.received:
            level, text = DiagnosticStatus.WARN, f"no images received on {self._sub.topic_name}"

        def median(values: list[float]) -> str:
            return f"{statistics.median(values):.1f}" if values else "nan"

        values = {
            "device": str(self.device),
            "input_topic": self._sub.topic_name,
            "latency_ms": median(stats.latencies_ms),
            "inference_ms": median(stats.inference_ms),
            "frame_age_ms": f"{stats.frame_age_ms:.1f}",
            "processing_rate_hz": f"{stats.window_processed / elapsed:.2f}",
            "frames_received": str(stats.received),
            "frames_processed": str(stats.processed),
            "frames_dropped": str(self._frames.dropped),
            "frames_malformed": str(stats.malformed),
        }
        status = DiagnosticStatus(level=level, name=self.get_fully_qualified_name(), message=text,
                                  hardware_id=str(self.device),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self._diag_pub.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))

    def close(self) -> None:
        """Stop the worker (it finishes the frame in hand)."""
        self._frames.close()
        self._worker.join(timeout=10.0)


def main(args: Optional[list[str]] = None) -> int:
    """Run the node until shut down; exit status 1 if it cannot start."""
    rclpy.init(args=args)
    try:
        node = SegmentNode()
    except (StartupError, ParameterException) as err:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {err}")
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
