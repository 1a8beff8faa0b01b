"""segment_node: parameters, the latest-frame buffer, the launch file, and end to end over real DDS.

The DDS tests run the node as a separate process (``saom-segment --ros-args --params-file
config/saom.yaml ...``, as the launch file does) with a tiny checkpoint written here; this process
publishes the camera images and checks what comes back.
"""
from __future__ import annotations

import errno
import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticStatus
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.exceptions import ParameterException
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from vision_msgs.msg import LabelInfo

from ros_domain import unique_domain_id
from ros_helpers import FAST_ENGINE, ROOT, Listener, NodeProcess, camera_image
from saom_ros.classes import SAOM_CLASSES
from saom_ros.everything import EverythingSettings
from saom_ros.image_codec import array_to_image, image_to_array
from saom_ros.model import ModelConfig, build_saom, save_checkpoint
from saom_ros.engine_loader import StartupError
from saom_ros.node_main import start
from saom_ros.segment_node import SegmentNode

START_TIMEOUT = 120  # seconds for the node process to import torch and subscribe (2 busy cores)
ANSWER_TIMEOUT = 90


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny SAOM checkpoint (55 classes) shared by the node processes of this module."""
    import torch
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_saom.pt"
    save_checkpoint(path, build_saom(ModelConfig.preset("tiny", num_classes=len(SAOM_CLASSES)),
                                     SAOM_CLASSES).eval())
    return path


# --- parameters, in process (a private context and domain: no cross-talk with the DDS tests) ---

@pytest.fixture
def context():
    ctx = Context()
    rclpy.init(context=ctx, domain_id=100 + unique_domain_id())
    yield ctx
    rclpy.shutdown(context=ctx)


def make_node(context, checkpoint, **params) -> SegmentNode:
    """A configured, active node; StartupError with the node's reason if configure fails."""
    values = {"checkpoint": str(checkpoint), **params}
    overrides = [Parameter(k, value=v) for k, v in values.items()]
    node = SegmentNode(context=context, parameter_overrides=overrides)
    if not start(node):
        reason, state = node.configure_error, node.lifecycle_state
        node.close()
        node.destroy_node()
        assert state == "unconfigured"  # a failed configure leaves it there
        raise StartupError(reason)
    assert node.lifecycle_state == "active"
    return node


def test_thresholds_change_while_running_and_bad_values_are_rejected(context, checkpoint):
    node = make_node(context, checkpoint)
    try:
        result = node.set_parameters([Parameter("pred_iou_thresh", value=1.5)])[0]
        assert not result.successful and "pred_iou_thresh" in result.reason
        assert node._engine.settings.pred_iou_thresh == EverythingSettings().pred_iou_thresh
        results = node.set_parameters([Parameter("pred_iou_thresh", value=0.5),
                                       Parameter("min_mask_area", value=25),
                                       Parameter("points_per_side", value=8)])
        assert all(r.successful for r in results)
        settings = node._engine.settings
        assert (settings.pred_iou_thresh, settings.min_mask_region_area,
                settings.points_per_side) == (0.5, 25, 8)
        assert not node.set_parameters([Parameter("points_per_side", value=0)])[0].successful
        assert not node.set_parameters([Parameter("max_instances", value=-1)])[0].successful
        wrong_type = node.set_parameters([Parameter("box_nms_thresh", value="high")])[0]
        assert not wrong_type.successful
        assert node._engine.settings == settings  # nothing rejected reached the engine
        read_only = node.set_parameters([Parameter("device", value="cpu")])[0]
        assert not read_only.successful and "read-only" in read_only.reason
    finally:
        node.close()
        node.destroy_node()


def test_streaming_gets_the_previous_result_and_the_strategy_changes_while_running(
        context, checkpoint):
    node = make_node(context, checkpoint, prompt_strategy="streaming", **FAST_ENGINE)
    try:
        engine, calls = node._engine, []

        class Spy:  # records what the node passes and returns
            settings = engine.settings

            def __call__(self, image, previous=None):
                calls.append((previous, engine(image, previous)))
                return calls[-1][1]
        node._engine = Spy()
        for seed in (1, 2):
            node._process(array_to_image(camera_image(seed), "rgb8", Header()), time.monotonic())
        assert calls[0][0] is None and calls[1][0] is calls[0][1]  # the last result goes back in
        node._engine = engine
        assert node.set_parameters([Parameter("prompt_strategy", value="hierarchical")])[0] \
            .successful
        assert engine.settings.prompt_strategy == "hierarchical"
        bad = node.set_parameters([Parameter("prompt_strategy", value="fast")])[0]
        assert not bad.successful and "grid, hierarchical, streaming" in bad.reason
    finally:
        node.close()
        node.destroy_node()


@pytest.mark.parametrize("name, value, words", [
    ("device", "gpu", "must be auto, cpu, cuda or cuda:N"),
    ("model_type", "vit_q", "must be one of auto, vit_h"),
    ("input_reliability", "sometimes", "must be one of auto, reliable, best_effort"),
    ("pred_iou_thresh", 2.0, "out of range"),
    ("prompt_strategy", "fast", "must be one of grid, hierarchical, streaming"),
])
def test_bad_start_up_values_are_rejected_with_a_reason(context, checkpoint, name, value, words):
    with pytest.raises(ParameterException, match=words):
        make_node(context, checkpoint, **{name: value})


def test_cuda_that_does_not_exist_is_an_error_that_says_so(context, checkpoint):
    import torch
    if torch.cuda.is_available():  # ask for one more device than there is
        device, words = f"cuda:{torch.cuda.device_count()}", "CUDA device(s) exist"
    else:
        device, words = "cuda", "CUDA is not available"
    with pytest.raises(StartupError, match=words):
        make_node(context, checkpoint, device=device)


def test_missing_checkpoint_and_bad_class_file_stop_start_up(context, checkpoint, tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(StartupError, match=f"checkpoint file {missing} does not exist"):
        make_node(context, missing)
    classes = tmp_path / "classes.yaml"
    classes.write_text("classes: [Mug, Sofa]\n")
    with pytest.raises(StartupError, match="names 2 classes but .* has 55"):
        make_node(context, checkpoint, classes=str(classes))


def test_class_file_overrides_the_names(context, checkpoint, tmp_path):
    classes = tmp_path / "classes.yaml"
    names = [f"thing{i}" for i in range(len(SAOM_CLASSES))]
    classes.write_text(yaml.safe_dump({"classes": names}))
    node = make_node(context, checkpoint, classes=str(classes))
    try:
        assert node.class_names == tuple(names)
    finally:
        node.close()
        node.destroy_node()


def test_unset_engine_parameters_come_from_the_checkpoint_and_set_ones_win(context, tmp_path):
    import torch
    torch.manual_seed(0)
    carried = {"pred_iou_thresh": 0.3, "stability_score_thresh": 0.9, "box_nms_thresh": 0.3,
               "points_per_side": 8}
    path = tmp_path / "carrying.pt"
    save_checkpoint(path, build_saom(ModelConfig.preset("tiny")).eval(), everything=carried)
    node = make_node(context, path, box_nms_thresh=0.6)
    try:
        settings = node._engine.settings
        assert (settings.pred_iou_thresh, settings.stability_score_thresh,
                settings.points_per_side) == (0.3, 0.9, 8)
        assert settings.box_nms_thresh == 0.6  # given explicitly
        assert settings.max_instances == EverythingSettings().max_instances  # carried by neither
        # the values in use are what `ros2 param get` shows
        assert node.get_parameter("pred_iou_thresh").value == 0.3
        assert node.get_parameter("box_nms_thresh").value == 0.6
        assert node.get_parameter("max_instances").value == 0
    finally:
        node.close()
        node.destroy_node()


def test_lifecycle_transitions_load_subscribe_unsubscribe_and_free(context, checkpoint):
    overrides = [Parameter("checkpoint", value=str(checkpoint)),
                 Parameter("autostart", value=False)]
    node = SegmentNode(context=context, parameter_overrides=overrides)

    def subscribed() -> bool:
        return bool(node.get_subscriptions_info_by_topic("/image"))

    try:
        assert node.lifecycle_state == "unconfigured" and node._engine is None
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state == "inactive" and node._engine is not None
        assert not subscribed()
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state == "active" and subscribed()
        engine = node._engine
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state == "inactive" and not subscribed()
        assert node._engine is engine  # the model stays loaded
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state == "unconfigured" and node._engine is None
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS  # again, after cleanup
        assert node.lifecycle_state == "inactive"
    finally:
        node.close()
        node.destroy_node()


def test_a_failed_configure_stays_unconfigured_and_keeps_the_reason(context, tmp_path):
    missing = tmp_path / "model.pt"
    node = SegmentNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(missing)), Parameter("autostart", value=False)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.lifecycle_state == "unconfigured"
        assert str(missing) in node.configure_error
    finally:
        node.close()
        node.destroy_node()


def status_values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def _name_too_long(checkpoint: Path, tmp_path: Path) -> tuple[dict, str]:
    """A checkpoint path whose file name is longer than the file system allows: pathlib's
    is_file raises for it while loading, before anything is made."""
    path = tmp_path / ("m" * 300 + ".pt")
    return ({"checkpoint": str(path)},
            f"OSError: [Errno {errno.ENAMETOOLONG}] {os.strerror(errno.ENAMETOOLONG)}: '{path}'")


def _class_not_encodable(checkpoint: Path, tmp_path: Path) -> tuple[dict, str]:
    """A class file naming a class by an unpaired surrogate (YAML's "\\ud800"): the model loads
    and the publishers are made, then ~/label_info cannot be serialised."""
    classes = tmp_path / "classes.yaml"
    names = ['"\\ud800"'] + [f"c{i}" for i in range(1, len(SAOM_CLASSES))]
    classes.write_text(f"classes: [{', '.join(names)}]\n")
    return ({"checkpoint": str(checkpoint), "classes": str(classes)},
            "UnicodeEncodeError: 'utf-8' codec can't encode character '\\ud800' in position 0: "
            "surrogates not allowed")


@pytest.mark.parametrize("cause", [_name_too_long, _class_not_encodable])
def test_an_unexpected_error_in_configure_is_logged_and_reported(context, checkpoint, capfd,
                                                                 tmp_path, cause):
    """rclpy swallows an exception from a transition callback; the node catches it, logs it and
    reports it in /diagnostics, and nothing of the half-made configuration stays."""
    params, error = cause(checkpoint, tmp_path)
    node = SegmentNode(context=context, parameter_overrides=[
        Parameter("autostart", value=False), *(Parameter(k, value=v) for k, v in params.items())])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.lifecycle_state == "unconfigured" and node._engine is None
        assert node._outputs == {} and node.device is None
        outputs = {"detections", "instances", "semantic", "label_info"}
        assert not outputs & {p.topic_name.rsplit("/", 1)[1] for p in node.publishers}
        assert node.configure_error == error
        status = node._diagnostic_status()
        assert status.level == DiagnosticStatus.ERROR
        assert status.message == f"unconfigured: configure failed: {error}"
        assert status_values(status)["device"] == status.hardware_id == "none"
    finally:
        node.close()
        node.destroy_node()
    err = capfd.readouterr().err  # rcutils logs to the C stderr
    assert "[ERROR]" in err and f"configure failed: {error}" in err, err


INPUTS = {"/image", "/depth", "/camera_info"}


@pytest.mark.parametrize("topic", ["depth", "camera_info"])
def test_an_unexpected_error_in_activate_is_logged_and_reported(context, checkpoint, capfd,
                                                                topic):
    """Another node of the process publishing text on an input topic: Fast DDS refuses a
    subscription to an existing topic of an incompatible type, after the image subscription (and
    for camera_info the depth one) was made."""
    node = SegmentNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint)), Parameter("autostart", value=False),
        Parameter("use_depth", value=True)])
    other = rclpy.create_node("text_publisher", context=context)
    text = other.create_publisher(String, f"/{topic}", 1)

    def inputs() -> list[str]:
        return sorted(s.topic_name for s in node.subscriptions if s.topic_name in INPUTS)

    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
        assert node.lifecycle_state == "inactive" and node._sub is None
        assert node._depth_subs == [] and inputs() == []
        prefix = "activate failed: RCLError: Failed to create subscription: "
        assert node.transition_failure.startswith(prefix) and topic in node.transition_failure
        status = node._diagnostic_status()
        assert (status.level, status.message) == (DiagnosticStatus.ERROR,
                                                  f"inactive: {node.transition_failure}")
        failure = node.transition_failure
        other.destroy_publisher(text)
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.transition_failure is None and inputs() == sorted(INPUTS)
    finally:
        other.destroy_node()
        node.close()
        node.destroy_node()
    err = capfd.readouterr().err  # rcutils logs to the C stderr
    assert "[ERROR]" in err and failure in err, err


def test_a_class_file_that_is_a_directory_stops_start_up_naming_it(context, checkpoint,
                                                                   tmp_path):
    with pytest.raises(StartupError, match=f"class file {tmp_path} is a directory"):
        make_node(context, checkpoint, classes=str(tmp_path))


def test_cleanup_leaves_no_device_in_the_diagnostics(context, checkpoint):
    node = make_node(context, checkpoint)
    try:
        status = node._diagnostic_status()
        assert status_values(status)["device"] == status.hardware_id == "cpu"
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        status = node._diagnostic_status()
        assert status_values(status)["device"] == status.hardware_id == "none"
    finally:
        node.close()
        node.destroy_node()


def test_a_frame_that_takes_longer_than_the_input_timeout_is_a_stall(context, checkpoint):
    """Images keep coming while one frame is processed for seconds (a decoder or model far
    slower than usual): /diagnostics says WARN, and OK again once frames are answered."""
    node = make_node(context, checkpoint, input_timeout=1.0, **FAST_ENGINE)
    engine, release = node._engine, threading.Event()

    class Slow:  # the first frame takes until released
        settings = engine.settings

        def __call__(self, image, previous=None):
            release.wait(30)
            return engine(image, previous)

    node._engine = Slow()
    try:
        frame = array_to_image(camera_image(1), "rgb8", Header())
        status, end = None, time.monotonic() + 20
        while time.monotonic() < end:
            node._on_image(frame)
            time.sleep(0.1)
            status = node._diagnostic_status()
            if status.level != DiagnosticStatus.OK:
                break
        assert status.level == DiagnosticStatus.WARN, status
        assert re.fullmatch(r"stalled: one frame in processing for \d+\.\d s \(over 1 s\), "
                            r"\d+ image\(s\) received meanwhile", status.message), status.message
        release.set()
        end = time.monotonic() + 20
        while time.monotonic() < end:
            node._on_image(frame)
            time.sleep(0.1)
            status = node._diagnostic_status()
            if status.level == DiagnosticStatus.OK:
                break
        assert status.level == DiagnosticStatus.OK, status
    finally:
        release.set()
        node.close()
        node.destroy_node()


# --- end to end over DDS ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ros():
    rclpy.init(domain_id=unique_domain_id())
    yield
    rclpy.shutdown()


@pytest.fixture(scope="module")
def node_process(ros, checkpoint, tmp_path_factory):
    proc = NodeProcess(tmp_path_factory.mktemp("node"),
                       {"checkpoint": checkpoint, "publish_overlay": True, **FAST_ENGINE},
                       {"image": "/cam/image"})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def listener(ros, node_process):
    lis = Listener("/cam/image")
    assert lis.wait_for_subscriber(START_TIMEOUT, node_process), node_process.output
    yield lis
    lis.close()


def header(seq: int, frame_id: str = "cam_optical") -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = 1000 + seq, 123_000 + seq
    return h


def request(listener: Listener, msg, process: NodeProcess, timeout: float = ANSWER_TIMEOUT):
    """Publish ``msg`` (again every few seconds, in case discovery was still settling) until
    detections, instances and semantic images with its stamp came back; returns them."""
    stamp, deadline = msg.header.stamp, time.monotonic() + timeout

    def answered():
        return all(listener.by_stamp(t, stamp) for t in ("detections", "instances", "semantic"))

    while time.monotonic() < deadline:
        listener.pub.publish(msg)
        if listener.spin_until(answered, 5.0, process):
            return [listener.by_stamp(t, stamp)[0] for t in ("detections", "instances", "semantic")]
        assert process.alive(), process.output
    raise AssertionError(f"no answer for stamp {stamp}; node output:\n{process.output}")


def test_outputs_carry_the_input_header_and_match_the_instance_image(listener, node_process):
    for seq in range(2):
        msg = array_to_image(camera_image(seq), "rgb8", header(seq))
        detections, instances, semantic = request(listener, msg, node_process)
        for out in (detections, instances, semantic):
            assert out.header == msg.header
        assert instances.encoding == semantic.encoding == "mono16"
        labels, classes = image_to_array(instances), image_to_array(semantic)
        assert labels.shape == classes.shape == (48, 64)
        assert detections.detections, "the fast settings keep every mask; expected instances"
        assert {int(d.id) for d in detections.detections} == set(np.unique(labels)) - {0}
        for det in detections.detections:
            assert det.header == msg.header
            ys, xs = np.nonzero(labels == int(det.id))
            assert det.bbox.center.position.x == (xs.min() + xs.max()) / 2
            assert det.bbox.center.position.y == (ys.min() + ys.max()) / 2
            assert (det.bbox.size_x, det.bbox.size_y) == (xs.max() - xs.min() + 1,
                                                           ys.max() - ys.min() + 1)
            class_id = int(det.results[0].hypothesis.class_id)
            assert det.results[0].hypothesis.class_id == str(class_id)
            assert 0 <= det.results[0].hypothesis.score <= 1
            assert (classes[labels == int(det.id)] == class_id).all()
        assert (classes[labels == 0] == 65535).all()  # unlabelled: vision_msgs' UNLABELED


def test_overlay_is_rgb8_with_the_input_header(listener, node_process):
    msg = array_to_image(camera_image(6), "rgb8", header(6))
    request(listener, msg, node_process)
    assert listener.spin_until(lambda: listener.by_stamp("overlay", msg.header.stamp), 15,
                               node_process)
    overlay = listener.by_stamp("overlay", msg.header.stamp)[0]
    assert overlay.encoding == "rgb8" and (overlay.height, overlay.width) == (48, 64)
    instances = image_to_array(listener.by_stamp("instances", msg.header.stamp)[0])
    pixels = image_to_array(overlay)
    source = camera_image(6)
    same = (pixels == source).all(axis=2)
    assert same[instances == 0].mean() > 0.5  # background kept, but for the drawn class names
    assert not same[instances > 0].all()  # instances tinted


def test_label_info_is_latched_and_lists_every_detected_class(listener, node_process):
    request(listener, array_to_image(camera_image(7), "rgb8", header(7)), node_process)
    late: list[LabelInfo] = []  # a subscriber that joins after the node published
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    listener.node.create_subscription(LabelInfo, "/segment_node/label_info", late.append, latched)
    assert listener.spin_until(lambda: late, 30, node_process)
    class_map = {c.class_id: c.class_name for c in late[0].class_map}
    assert class_map == {65535: "unlabeled", **{i + 1: n for i, n in enumerate(SAOM_CLASSES)}}
    for det_array in listener.messages("detections"):
        for det in det_array.detections:
            assert int(det.results[0].hypothesis.class_id) in class_map


def test_diagnostics_report_latency_rate_drops_and_device(listener, node_process):
    request(listener, array_to_image(camera_image(8), "rgb8", header(8)), node_process)
    # the report of the window that processed the frame
    assert listener.spin_until(lambda: int(listener.diagnostics_values().get(
        "frames_processed", 0)) >= 1 and listener.diagnostics_values().get(
        "points_decoded", "nan") != "nan", 15, node_process)
    values = listener.diagnostics_values()
    assert float(values["points_decoded"]) == 4 * 4  # FAST_ENGINE's full grid
    assert values["device"] == "cpu"
    assert float(values["latency_ms"]) > 0 or values["latency_ms"] == "nan"
    assert {"processing_rate_hz", "frames_dropped", "frames_received", "frames_malformed",
            "inference_ms", "frame_age_ms", "points_decoded"} <= set(values)


def _malformed() -> list[Image]:
    good = array_to_image(camera_image(0), "rgb8", header(20))
    wrong_step = array_to_image(camera_image(0), "rgb8", header(21))
    wrong_step.step = 10
    unsupported = array_to_image(camera_image(0), "rgb8", header(22))
    unsupported.encoding = "yuv422_yuy2"
    truncated = array_to_image(camera_image(0), "rgb8", header(23))
    truncated.data = bytes(good.data)[:1000]
    empty = Image(header=header(24), height=0, width=0, encoding="rgb8", step=0)
    return [wrong_step, unsupported, truncated, empty]


def test_malformed_images_warn_and_the_next_valid_image_is_answered(listener, node_process):
    bad = _malformed()
    for msg in bad:
        listener.pub.publish(msg)
        listener.spin_until(lambda: False, 1.0)  # let the worker take each one separately
    valid = array_to_image(camera_image(9), "rgb8", header(25))
    request(listener, valid, node_process)
    assert node_process.alive()
    for msg in bad:  # none of them produced output
        assert not listener.by_stamp("detections", msg.header.stamp)
    assert listener.spin_until(lambda: int(listener.diagnostics_values().get(
        "frames_malformed", 0)) == len(bad), 15, node_process), listener.diagnostics_values()
    warnings = node_process.output.count("skipped image")
    assert 1 <= warnings < len(bad), node_process.output  # warned, but throttled (one per 5 s)


def test_thresholds_set_over_the_parameter_service_apply_to_the_next_frame(listener, node_process):
    client = listener.node.create_client(SetParameters, "/segment_node/set_parameters")
    assert client.wait_for_service(timeout_sec=30)

    def set_param(name, value):
        future = client.call_async(SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]))
        assert listener.spin_until(future.done, 30, node_process)
        return future.result().results[0]

    rejected = set_param("box_nms_thresh", 1.5)
    assert not rejected.successful and "box_nms_thresh" in rejected.reason
    assert set_param("max_instances", 2).successful
    try:
        detections, _, _ = request(listener, array_to_image(camera_image(10), "rgb8", header(30)),
                                   node_process)
        assert 1 <= len(detections.detections) <= 2
    finally:
        assert set_param("max_instances", 0).successful


def test_with_no_parameters_at_all_the_packaged_model_finds_objects_on_the_demo_frames(
        ros, tmp_path):
    """No params file, no -p: the packaged checkpoint's own everything-mode settings apply."""
    proc = NodeProcess(tmp_path, {}, {"__ns": "/defaults"}, params_file=None)
    lis = Listener("/defaults/image", node="/defaults/segment_node")
    try:
        assert lis.wait_for_subscriber(START_TIMEOUT, proc), proc.output
        frames = sorted((ROOT / "saom_ros" / "data" / "demo_frames").glob("*.png"))
        assert frames
        for seq, path in enumerate(frames):
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            detections, _, _ = request(lis, array_to_image(rgb, "rgb8", header(60 + seq)), proc)
            assert detections.detections, f"nothing found on {path.name}\n{proc.output}"
    finally:
        lis.close()
        proc.stop()


@pytest.mark.slow
def test_compressed_input_jpeg_png_and_corrupt(ros, checkpoint, tmp_path):
    proc = NodeProcess(tmp_path, {"checkpoint": checkpoint, "use_compressed": True, **FAST_ENGINE},
                       {"image/compressed": "/cam/image/compressed", "__ns": "/comp"})
    lis = Listener("/cam/image/compressed", compressed=True, node="/comp/segment_node")
    try:
        assert lis.wait_for_subscriber(START_TIMEOUT, proc), proc.output
        rgb = camera_image(3)
        for seq, (ext, fmt) in enumerate([(".png", "png"), (".jpg", "rgb8; jpeg compressed bgr8")]):
            ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            msg = CompressedImage(header=header(40 + seq), format=fmt, data=buf.tobytes())
            detections, instances, _ = request(lis, msg, proc)
            assert instances.header == msg.header
            assert (instances.height, instances.width) == (48, 64)
            if seq == 0:
                corrupt = CompressedImage(header=header(50), format="jpeg",
                                          data=b"\xff\xd8\xff\xe0" + bytes(200))
                lis.pub.publish(corrupt)
                lis.spin_until(lambda: False, 1.0)
        assert "skipped image" in proc.output and proc.alive()
        assert not lis.by_stamp("detections", header(50).stamp)
    finally:
        lis.close()
        proc.stop()


@pytest.mark.slow
def test_frame_age_stays_bounded_when_images_come_faster_than_the_model(ros, checkpoint, tmp_path):
    """30 Hz into a model that needs far longer than 33 ms a frame: old frames are dropped, so the
    age of answered frames (receive time - stamp) does not grow the way a queue would make it."""
    # 256 prompts a frame, every mask kept: several times slower than the camera on a quiet machine.
    slow = {**FAST_ENGINE, "points_per_side": 16}
    proc = NodeProcess(tmp_path, {"checkpoint": checkpoint, **slow},
                       {"image": "/cam/fast", "__ns": "/fast"})
    lis = Listener("/cam/fast", node="/fast/segment_node")
    try:
        assert lis.wait_for_subscriber(START_TIMEOUT, proc), proc.output
        img = camera_image(5, height=240, width=320)
        published, start = 0, time.monotonic()
        while time.monotonic() - start < 30:
            h = Header(frame_id="cam", stamp=lis.node.get_clock().now().to_msg())
            lis.pub.publish(array_to_image(img, "rgb8", h))
            published += 1
            lis.spin_until(lambda: False, 1 / 30)
        lis.spin_until(lambda: False, 3)
        answers = lis.received["detections"]
        ages = [t - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9) for t, m in answers]
        assert len(ages) >= 6, f"only {len(ages)} answers; node output:\n{proc.output}"
        assert len(ages) < published / 3  # the model really was slower than the camera
        third = len(ages) // 3
        early, late = np.median(ages[:third]), np.median(ages[-third:])
        print(f"published {published}, answered {len(ages)}, median age early {early:.2f} s, "
              f"late {late:.2f} s")
        # A queue would add ~(30 Hz * model time) frames of backlog per second: after 30 s the
        # late ages would be many times the early ones. Dropping keeps them alike.
        assert late < 2 * early + 1.0, (early, late, ages)
        assert int(lis.diagnostics_values().get("frames_dropped", 0)) > 0
    finally:
        lis.close()
        proc.stop()
