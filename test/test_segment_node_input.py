"""segment_node against hostile or absent input, over real DDS: decompression bombs (the node's
peak memory, from /proc), a progressive-JPEG scan bomb, a camera that stops, the compressed topic
from `-r image:=X` alone, and a checkpoint path or class file that is a directory."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import CompressedImage

from image_bombs import corrupt_images, jpeg_claiming, jpeg_scan_bomb, png_bomb
from ros_helpers import FAST_ENGINE, Listener, NodeProcess, camera_image, run_node
from test_segment_node import START_TIMEOUT, header, request, ros  # noqa: F401 (fixture)

CAMERA = "/cam/color/image_raw"
ROS_LOG_LINE = re.compile(r"\[(DEBUG|INFO|WARN|ERROR|FATAL)\] \[\d+\.\d+\] \[")
INPUT_TIMEOUT = 3.0


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident memory so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def jpeg_frame(seq: int) -> CompressedImage:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(camera_image(seq), cv2.COLOR_RGB2BGR))
    return CompressedImage(header=header(seq), format="jpeg", data=buf.tobytes())


def settled(listener: Listener, process, key: str) -> dict[str, str]:
    """The /diagnostics values once two reports in a row agree on ``key`` (a count that earlier
    frames may still be adding to)."""
    before: dict = {}
    for _ in range(10):
        listener.spin_until(lambda: False, 1.2)
        now = listener.diagnostics_values()
        if before and now.get(key) == before.get(key):
            return now
        before = now
    raise AssertionError(f"{key} did not settle: {before}; node output:\n{process.output}")


def latest_status(listener: Listener) -> DiagnosticStatus | None:
    for msg in reversed(listener.messages("diagnostics")):
        for status in msg.status:
            if status.name == listener.node_name:
                return status
    return None


@pytest.fixture(scope="module")
def node_process(ros, tmp_path_factory):  # noqa: F811 (ros is a fixture)
    """The packaged model on compressed input, remapped with `-r image:=CAMERA` only."""
    proc = NodeProcess(tmp_path_factory.mktemp("node"),
                       {"use_compressed": True, "input_timeout": INPUT_TIMEOUT, **FAST_ENGINE},
                       {"image": CAMERA})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def listener(node_process):
    lis = Listener(f"{CAMERA}/compressed", compressed=True)
    assert lis.wait_for_subscriber(START_TIMEOUT, node_process), node_process.output
    yield lis
    lis.close()


def test_remapping_image_alone_moves_the_compressed_topic(listener, node_process):
    detections, instances, _ = request(listener, jpeg_frame(1), node_process)
    assert instances.header == header(1)
    assert f"segmenting {CAMERA}/compressed (CompressedImage" in node_process.output


def test_a_stopped_camera_goes_warn_then_error_and_recovers(listener, node_process):
    request(listener, jpeg_frame(2), node_process)  # the camera is alive

    def level(expected: bytes):
        return lambda: (s := latest_status(listener)) is not None and s.level == expected

    assert listener.spin_until(level(DiagnosticStatus.OK), 5, node_process)
    assert listener.spin_until(level(DiagnosticStatus.WARN), 5, node_process)
    assert "no image for" in latest_status(listener).message
    assert listener.spin_until(level(DiagnosticStatus.ERROR), INPUT_TIMEOUT + 3, node_process)
    assert latest_status(listener).message.startswith(f"{CAMERA}/compressed: no image for")
    assert "input_timeout 3 s" in latest_status(listener).message
    request(listener, jpeg_frame(3), node_process)
    assert listener.spin_until(level(DiagnosticStatus.OK), 5, node_process), \
        latest_status(listener)


@pytest.mark.slow
def test_decompression_bombs_are_refused_before_allocating(listener, node_process):
    """A 1.2 MB PNG of 20000x20000 pixels and a JPEG whose header claims 30000x30000: each would
    take over 1 GB decoded. The node refuses both from their headers and answers the next frame."""
    request(listener, jpeg_frame(10), node_process)
    before = peak_rss_mb(node_process.proc.pid)
    bombs = [(png_bomb(20000, 20000), "png"), (jpeg_claiming(30000, 30000), "jpeg")]
    for seq, (data, fmt) in enumerate(bombs, start=1):  # one at a time: latest frame wins
        listener.pub.publish(CompressedImage(header=header(20 + seq), format=fmt, data=data))
        assert listener.spin_until(lambda: int(listener.diagnostics_values().get(
            "frames_malformed", 0)) == seq, 15, node_process), listener.diagnostics_values()
    request(listener, jpeg_frame(30), node_process)
    after = peak_rss_mb(node_process.proc.pid)
    print(f"node peak memory (VmHWM): {before:.0f} MB before the bombs, {after:.0f} MB after")
    assert after - before < 100, (before, after)
    assert not listener.by_stamp("detections", header(21).stamp)
    assert "image of 20000x20000 = 400000000 pixels exceeds the limit max_image_pixels" in \
        node_process.output
    assert node_process.alive()


def test_corrupt_frames_get_throttled_warnings_and_no_decoder_output(listener, node_process):
    start = len(node_process.output.splitlines())
    for k, data in enumerate(corrupt_images(150)):
        listener.pub.publish(CompressedImage(header=header(100 + k), format="", data=data))
        listener.spin_until(lambda: False, 0.02)
    request(listener, jpeg_frame(300), node_process)
    lines = node_process.output.splitlines()[start:]
    assert int(listener.diagnostics_values()["frames_malformed"]) > 20  # the node decoded them
    # Everything the node printed came through its logger ("libpng error: ...", "Corrupt JPEG
    # data: ..." and OpenCV's "[ WARN:0@...]" lines did not).
    assert [line for line in lines if not ROS_LOG_LINE.match(line)] == []
    assert 1 <= sum("skipped image" in line for line in lines) <= 3  # once per 5 s


def test_a_frame_stamped_before_1970_is_segmented_and_not_counted_malformed(listener,
                                                                           node_process):
    """int32 seconds allow a negative stamp (rclpy's Time does not): the frame is answered with
    its own header and counts as processed, not as a skipped frame."""
    request(listener, jpeg_frame(400), node_process)
    before: dict = {}
    for _ in range(10):  # until a second's reports count no more skipped frames (earlier tests')
        listener.spin_until(lambda: False, 1.2)
        now = listener.diagnostics_values()
        if before and now.get("frames_malformed") == before.get("frames_malformed"):
            break
        before = now
    frame = jpeg_frame(401)
    frame.header.stamp.sec = -5
    _, instances, _ = request(listener, frame, node_process)
    assert instances.header == frame.header
    assert listener.spin_until(lambda: int(listener.diagnostics_values()["frames_processed"])
                               > int(before["frames_processed"]), 5, node_process)
    assert listener.diagnostics_values()["frames_malformed"] == before["frames_malformed"]
    assert "skipped image (frame_id 'cam_optical', stamp -5" not in node_process.output


def test_a_progressive_jpeg_of_thousands_of_scans_is_refused_as_malformed(listener,
                                                                            node_process):
    """~200 KB, 4096x4096 (within max_image_pixels), 3000 repeats of one scan: it took ~29 s to
    decode, with nothing processed and /diagnostics OK meanwhile. Refused from its scan count."""
    request(listener, jpeg_frame(500), node_process)
    before = int(settled(listener, node_process, "frames_malformed")["frames_malformed"])
    bomb = CompressedImage(header=header(501), format="jpeg",
                           data=jpeg_scan_bomb(4096, 4096, 3000))
    listener.pub.publish(bomb)
    assert listener.spin_until(lambda: int(listener.diagnostics_values()[
        "frames_malformed"]) == before + 1, 10, node_process), listener.diagnostics_values()
    _, instances, _ = request(listener, jpeg_frame(502), node_process, timeout=10)
    assert instances.header == header(502)
    assert not listener.by_stamp("detections", header(501).stamp)
    assert "JPEG of 3009 scans exceeds the limit of 100" in node_process.output


def test_a_directory_as_checkpoint_is_reported_as_one(tmp_path):
    result = run_node({"checkpoint": tmp_path})
    assert result.returncode != 0
    assert f"checkpoint {tmp_path} is a directory, not a checkpoint file" in \
        result.stdout + result.stderr


def test_a_directory_as_class_file_names_the_transition_and_the_file(tmp_path):
    """An OSError in configure (rclpy swallows exceptions from transition callbacks): the log
    names the failed transition and the file, and the start-up failure says configure."""
    result = run_node({"classes": tmp_path})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    reason = f"class file {tmp_path} is a directory, not a class file"
    assert f"configure failed: {reason}" in output
    assert "[FATAL]" in output and f"cannot start: configure failed: {reason}" in output
