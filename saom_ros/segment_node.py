"""segment_node: camera images in, class-labelled whole-object instances out (vision_msgs).

A thin rclpy lifecycle node: transitions, QoS, callbacks. Parameters live in ``node_parameters``,
image conversion in ``image_codec``, results -> messages in ``messages``, the model in
``model``/``everything``. Inference runs on a worker thread fed by a one-slot buffer, so the
subscription callback never waits for the model and a frame that arrives while another waits
unprocessed replaces it (counted as dropped): latency stays flat.

Lifecycle: configure loads the model and creates the publishers, activate subscribes, deactivate
unsubscribes (the model stays loaded), cleanup frees the model. With ``autostart`` (the default)
the node configures and activates itself (``node_main``, which runs the process).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Optional

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo

from saom_ros import image_codec, messages
from saom_ros.messages_3d import stamp_ns
from saom_ros.depth_stage import DepthStage
from saom_ros.engine_loader import StartupError, load_engine
from saom_ros.everything import EverythingEngine, Instances
from saom_ros.input_qos import FollowingSubscription
from saom_ros.input_watchdog import InputWatchdog, StallWatch
from saom_ros.latest_frame import LatestFrame
from saom_ros.node_diagnostics import FrameStats, frame_values, summary
from saom_ros.node_parameters import (ENGINE_PARAMETERS, FROM_CHECKPOINT, engine_fields,
                                      parameter_table, validate)
from saom_ros.tracking import Tracker, track_image

NODE_NAME = "segment_node"
_WARN_EVERY_S = 5.0


def _which(header: Header) -> str:
    """A frame as the warnings name it: its frame_id and stamp."""
    return f"frame_id {header.frame_id!r}, stamp {header.stamp.sec}.{header.stamp.nanosec:09d}"


def compressed_topic(node: LifecycleNode) -> str:
    """The compressed input topic as image_transport names it: <resolved image topic>/compressed,
    so `-r image:=X` alone moves it to X/compressed; a remap of image/compressed itself wins."""
    explicit = node.resolve_topic_name("image/compressed")
    if explicit != node.resolve_topic_name("image/compressed", only_expand=True):
        return explicit
    return node.resolve_topic_name("image") + "/compressed"


class SegmentNode(LifecycleNode):
    """Everything-mode SAOM segmentation of one camera stream, as a managed (lifecycle) node."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._engine: Optional[EverythingEngine] = None
        self._previous: Optional[Instances] = None  # the last result: streaming prompts
        self._outputs: dict[str, Any] = {}  # publishers, created by configure
        self._sub: Optional[FollowingSubscription] = None  # the camera, while active
        self._depth_subs: list[FollowingSubscription] = []  # depth, camera_info (use_depth)
        self._depth: Optional[DepthStage] = None  # configured with use_depth
        self._tracker: Optional[Tracker] = None  # configured with track
        self.configure_error: Optional[str] = None  # why the last configure failed
        self.activate_error: Optional[str] = None  # why the last activate failed
        self.params: dict[str, Any] = {}  # the values in use (engine ones follow `param set`)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.declare_parameters("", parameter_table())
        # None: unset (a FROM_CHECKPOINT parameter nobody gave); configure fills it in
        self.params = {name: self.get_parameter_or(name).value for name, _, _ in parameter_table()}
        msg_type, topic, decode = (
            (CompressedImage, compressed_topic(self), image_codec.compressed_to_rgb)
            if self.params["use_compressed"] else (Image, "image", image_codec.image_to_rgb))
        self._msg_type, self._topic, self._decode = msg_type, topic, decode
        self.input_topic = self.resolve_topic_name(topic)
        self.device: Optional[torch.device] = None
        self.class_names: tuple[str, ...] = ()

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._stats = FrameStats()
        self._stats_lock = threading.Lock()
        self._busy = threading.Lock()  # held while a frame is processed and published
        self._frames = LatestFrame()
        self._last_report = time.monotonic()
        self._watchdog = InputWatchdog(self.params["input_timeout"], self._last_report)
        self._stall = StallWatch(self.params["input_timeout"])
        self.create_timer(1.0, self._on_timer)
        self._worker = threading.Thread(target=self._work, name="saom_inference", daemon=True)
        self._worker.start()

    # --- lifecycle transitions --------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        # rclpy turns an exception in a transition callback into an error transition without a
        # word: every failure is caught here, logged and kept for /diagnostics.
        try:
            self._configure()
        except Exception as err:  # StartupError says why; anything else is named by its type
            self.configure_error = str(err) if isinstance(err, StartupError) else \
                f"{type(err).__name__}: {err}"
            self.get_logger().error(f"configure failed: {self.configure_error}")
            self._unload()
            return TransitionCallbackReturn.FAILURE
        self.configure_error = self.activate_error = None
        self.get_logger().info(
            f"configured: {self.params['checkpoint'] or 'the packaged model'} "
            f"({len(self.class_names)} classes) on "
            f"{self.device}; image conversion: {image_codec.backend()}")
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        """on_configure's work: the model, the publishers, ~/label_info; raises what fails."""
        self._load()
        self._show_checkpoint_settings()
        out_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._outputs = {
            name: self.create_publisher(msg_type, f"~/{name}", qos)
            for name, msg_type, qos in (("detections", Detection2DArray, out_qos),
                                        ("instances", Image, out_qos),
                                        ("semantic", Image, out_qos),
                                        ("label_info", LabelInfo, latched))}
        if self.params["publish_overlay"]:
            self._outputs["overlay"] = self.create_publisher(Image, "~/overlay", out_qos)
        self._configure_3d_and_tracking(out_qos)
        self._publish_label_info()

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._activate()
        except Exception as err:  # as in on_configure: rclpy would swallow it
            self.activate_error = f"{type(err).__name__}: {err}"
            self.get_logger().error(f"activate failed: {self.activate_error}")
            self._stop_input()
            return TransitionCallbackReturn.FAILURE
        self.activate_error = None
        return TransitionCallbackReturn.SUCCESS

    def _activate(self) -> None:
        """on_activate's work: the subscriptions; raises what fails."""
        self._watchdog.start(time.monotonic())
        self._sub = FollowingSubscription(self, self._msg_type, self._topic, self._on_image,
                                          self.params["input_reliability"],
                                          self.params["input_depth"])
        if self._depth is not None:  # a few frames deep: depth is buffered for stamp pairing
            # One at a time into the list: if camera_info's fails, _stop_input still finds the
            # depth subscription already made.
            self._depth_subs = []
            for msg_type, topic, callback in ((Image, "depth", self._on_depth),
                                              (CameraInfo, "camera_info",
                                               self._depth.set_camera_info)):
                self._depth_subs.append(FollowingSubscription(
                    self, msg_type, topic, callback, self.params["input_reliability"], 5))
        self.get_logger().info(f"active: segmenting {self.input_topic} ({self._msg_type.__name__}, "
                               f"{self._sub.reliability_name})")

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unload()
        self.activate_error = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._unload()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._unload()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured

    @property
    def lifecycle_state(self) -> str:
        """The current state's label: unconfigured, inactive, active, finalized, ..."""
        return self._state_machine.current_state[1]

    @property
    def transition_failure(self) -> Optional[str]:
        """Which transition failed last and why ("configure failed: ..."), None if none did."""
        if self.configure_error:
            return f"configure failed: {self.configure_error}"
        return f"activate failed: {self.activate_error}" if self.activate_error else None

    def _load(self) -> None:
        """Load the model and build the engine from the parameters; StartupError says why not."""
        p = self.params
        loaded = load_engine(p["checkpoint"], p["model_type"], p["device"], p["classes"],
                             engine_fields(p))
        self._engine, self.device, self.class_names = (loaded.engine, loaded.device,
                                                       loaded.class_names)

    def _show_checkpoint_settings(self) -> None:
        """Set the unset engine parameters to the values in use, so `ros2 param get` shows them."""
        unset = [name for name in FROM_CHECKPOINT if self.params[name] is None]
        settings = self._engine.settings
        self.set_parameters([Parameter(name, value=getattr(settings, ENGINE_PARAMETERS[name]))
                             for name in unset])
        if unset:
            self.get_logger().info("from the checkpoint (or the generator's defaults): " + ", ".join(
                f"{name} {self.params[name]}" for name in unset))

    def _configure_3d_and_tracking(self, out_qos: QoSProfile) -> None:
        p = self.params
        if p["use_depth"]:
            self._outputs["detections_3d"] = self.create_publisher(
                Detection3DArray, "~/detections_3d", out_qos)
            if p["publish_points"]:
                self._outputs["points"] = self.create_publisher(PointCloud2, "~/points", out_qos)
            self._depth = DepthStage(p["depth_sync_tolerance"], p["publish_points"],
                                     self._engine.settings.max_image_pixels)
        if p["track"] and self._tracker is None:  # kept across cleanup: ids wait out the delay
            self._tracker = Tracker(p["track_iou_thresh"], p["track_max_missed"],
                                    p["track_id_reuse_delay"])

    def _stop_input(self) -> None:
        """Unsubscribe, forget a waiting frame and wait for the frame in hand to be published;
        tracks and buffered depth are forgotten."""
        if self._sub is not None:
            self._sub.destroy()
            self._sub = None
        for sub in self._depth_subs:
            sub.destroy()
        self._depth_subs = []
        self._frames.discard()
        with self._busy:
            self._previous = None  # streaming prompts restart with the tracks: a new keyframe
            if self._tracker is not None:
                self._tracker.reset()
            if self._depth is not None:
                self._depth.reset()

    def _unload(self) -> None:
        """Free the model (and its GPU memory) and destroy the output publishers. The tracker
        forgets its tracks but stays (its parameters are read-only): a later configure must not
        give recently used ids to other objects."""
        with self._busy:
            self._engine = self._depth = self._previous = self.device = None
            if self._tracker is not None:
                self._tracker.reset()
            for pub in self._outputs.values():
                self.destroy_publisher(pub)
            self._outputs = {}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- parameters -------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            reason = validate(param)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        changes = {p.name: p.value for p in params if p.name in ENGINE_PARAMETERS}
        engine = self._engine
        if engine is not None and changes:  # None while unconfigured: configure reads them
            try:
                engine.settings = dataclasses.replace(engine.settings, **engine_fields(changes))
            except ValueError as err:  # the engine's own checks, if any
                return SetParametersResult(successful=False, reason=str(err))
            if "pred_iou_thresh" in changes and "label_info" in self._outputs:
                self._publish_label_info(changes["pred_iou_thresh"])
        self.params.update(changes)
        return SetParametersResult(successful=True)

    def _publish_label_info(self, threshold: Optional[float] = None) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        threshold = self._engine.settings.pred_iou_thresh if threshold is None else threshold
        self._outputs["label_info"].publish(messages.label_info(self.class_names, header, threshold))

    # --- images -----------------------------------------------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        now = time.monotonic()
        self._watchdog.frame(now)
        self._stall.arrived()
        with self._stats_lock:
            self._stats.received += 1
        self._frames.put((msg, now))

    def _on_depth(self, msg: Image) -> None:
        stage = self._depth
        if stage is None:  # cleaned up meanwhile
            return
        try:
            stage.add_depth(msg)
        except ValueError as err:  # DepthError: refused, not buffered
            self._count("depth_refused")
            self.get_logger().warning(f"{err} ({_which(msg.header)})",
                                      throttle_duration_sec=_WARN_EVERY_S)

    def _count(self, kind: str) -> None:
        with self._stats_lock:
            self._stats.count(kind)

    def _work(self) -> None:
        while (item := self._frames.take()) is not None:
            msg, received = item
            with self._busy:
                # Deactivated (no subscription) or cleaned up since the frame was taken: a frame
                # taken just before _stop_input is not published after it.
                if self._engine is None or self._sub is None:
                    continue
                self._stall.started(time.monotonic())
                try:
                    self._process(msg, received)
                except ValueError as err:  # ImageDecodeError, or the engine refusing the image
                    self._count("malformed")
                    self.get_logger().warning(f"skipped image ({_which(msg.header)}): {err}",
                                              throttle_duration_sec=_WARN_EVERY_S)
                except Exception as err:  # keep serving the next frame whatever went wrong
                    if self._frames.closed or not self.context.ok():  # shutting down
                        return
                    self._count("failed")
                    self.get_logger().error(f"processing failed: {type(err).__name__}: {err}",
                                            throttle_duration_sec=_WARN_EVERY_S)
                finally:
                    self._stall.finished()

    def _process(self, msg: Image | CompressedImage, received: float) -> None:
        rgb = self._decode(msg, self._engine.settings.max_image_pixels)
        start = time.monotonic()
        instances = self._previous = self._engine(rgb, self._previous)
        inference_ms = (time.monotonic() - start) * 1e3
        header, out = msg.header, self._outputs
        ids = self._tracker.update(instances) if self._tracker is not None else None
        out["detections"].publish(messages.detections(instances, header, ids))
        out["instances"].publish(messages.label_image(
            instances.instance_image if ids is None else track_image(instances.instance_image, ids),
            header))
        out["semantic"].publish(messages.semantic_image(instances.semantic_image, header))
        if "overlay" in out:
            out["overlay"].publish(image_codec.array_to_image(
                messages.overlay(rgb, instances, self.class_names), "rgb8", header))
        if self._depth is not None:
            self._publish_3d(instances, ids, header)
        # Plain integers: rclpy's Time refuses a negative stamp, which the message type allows.
        age_ns = self.get_clock().now().nanoseconds - stamp_ns(header)
        with self._stats_lock:
            self._stats.processed += 1
            self._stats.window_processed += 1
            self._stats.latencies_ms.append((time.monotonic() - received) * 1e3)
            self._stats.inference_ms.append(inference_ms)
            self._stats.points_decoded.append(instances.points_decoded)
            self._stats.frame_ages_ms.append(age_ns / 1e6)

    def _publish_3d(self, instances: Any, ids: Optional[np.ndarray], header: Header) -> None:
        """~/detections_3d (and ~/points) of this frame; a throttled warning if there are none."""
        if ids is None:
            ids = np.arange(1, len(instances) + 1, dtype=np.uint16)
        try:
            detections_3d, cloud = self._depth.outputs(instances, ids, header)
        except ValueError as err:  # DepthError, ImageDecodeError: the 2D outputs are out already
            self._count("without_3d")
            self.get_logger().warning(
                f"no 3D output (stamp {header.stamp.sec}.{header.stamp.nanosec:09d}): {err}",
                throttle_duration_sec=_WARN_EVERY_S)
            return
        self._outputs["detections_3d"].publish(detections_3d)
        if cloud is not None:
            self._outputs["points"].publish(cloud)

    # --- diagnostics ------------------------------------------------------------------------
    def _on_timer(self) -> None:
        """Once a second: follow the camera's QoS, report diagnostics."""
        for sub in ([self._sub] if self._sub else []) + self._depth_subs:
            sub.follow()
        self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()),
            status=[self._diagnostic_status()]))

    def _diagnostic_status(self) -> DiagnosticStatus:
        """This report window's status (and the start of the next window)."""
        now = time.monotonic()
        with self._stats_lock:
            stats = self._stats.next_window()
        elapsed, self._last_report = now - self._last_report, now
        state = self.lifecycle_state
        level, text = summary(state, self.transition_failure, stats,
                              self._watchdog.check(now, elapsed), self.input_topic,
                              self._stall.check(now))
        device = "none" if self.device is None else str(self.device)  # none: no model loaded
        values = {
            "lifecycle_state": state,
            "device": device,
            "input_topic": self.input_topic,
            "input_reliability": self._sub.reliability_name if self._sub else "not subscribed",
            **frame_values(stats, elapsed, self._frames.dropped, self._depth is not None),
        }
        return DiagnosticStatus(level=level, name=self.get_fully_qualified_name(), message=text,
                                hardware_id=device,
                                values=[KeyValue(key=k, value=v) for k, v in values.items()])

    def close(self) -> None:
        """Stop the worker: it finishes the frame in hand, however long that takes (a
        process left to exit while the worker runs in torch aborts)."""
        self._frames.close()
        self._worker.join()
