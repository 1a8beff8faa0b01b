"""segment_node as a managed node, over real DDS from this process: the lifecycle services drive
it through every state while camera frames arrive, and only an active node answers; a failed
configure is logged and reported; /diagnostics keep no stale values."""
from __future__ import annotations

import time

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from std_msgs.msg import Header

from ros_helpers import FAST_ENGINE, Listener, NodeProcess, camera_image
from saom_ros.image_codec import array_to_image
from test_segment_node import (START_TIMEOUT, checkpoint, header, request,  # noqa: F401 (fixtures)
                               ros)
from test_segment_node_input import latest_status

SILENCE_S = 4.0  # how long a frame may go unanswered before we call it "not answered"


class Lifecycle:
    """Client of <node>/change_state and <node>/get_state, as a lifecycle manager uses them."""

    def __init__(self, listener: Listener, node: str, process: NodeProcess) -> None:
        self.listener, self.process = listener, process
        self._change = listener.node.create_client(ChangeState, f"{node}/change_state")
        self._get = listener.node.create_client(GetState, f"{node}/get_state")
        end = time.monotonic() + START_TIMEOUT
        while not (self._change.service_is_ready() and self._get.service_is_ready()):
            assert time.monotonic() < end and process.alive(), process.output
            listener.spin_until(lambda: False, 0.2)
        # Ready means the node's request readers match our clients; its response writers may
        # not have matched our response readers yet, and a response sent before that is lost
        # ("failed to send response (timeout)" on a busy machine). Let discovery finish.
        listener.spin_until(lambda: False, 1.0)

    def _call(self, client, request):
        future = client.call_async(request)
        assert self.listener.spin_until(future.done, 60, self.process), self.process.output
        return future.result()

    def change(self, transition: int) -> bool:
        return self._call(self._change, ChangeState.Request(
            transition=Transition(id=transition))).success

    def state(self) -> int:
        return self._call(self._get, GetState.Request()).current_state.id


def answered(listener: Listener, process: NodeProcess, seq: int) -> bool:
    """Publish frame ``seq`` (a few times, SILENCE_S in all); True if detections came back."""
    msg = array_to_image(camera_image(seq), "rgb8", header(seq))
    end = time.monotonic() + SILENCE_S
    while time.monotonic() < end:
        listener.pub.publish(msg)
        if listener.spin_until(lambda: listener.by_stamp("detections", msg.header.stamp), 1.0,
                               process):
            return True
    return False


def diagnostics_state(listener: Listener, process: NodeProcess, wanted: str) -> bool:
    """True once /diagnostics reports lifecycle_state ``wanted``."""
    return listener.spin_until(
        lambda: listener.diagnostics_values().get("lifecycle_state") == wanted, 10, process)


def test_only_an_active_node_answers_through_the_whole_lifecycle(ros, checkpoint, tmp_path):
    proc = NodeProcess(tmp_path, {"checkpoint": checkpoint, "autostart": False, **FAST_ENGINE},
                       {"image": "/cam/managed", "__ns": "/managed"})
    lis = Listener("/cam/managed", node="/managed/segment_node")
    try:
        life = Lifecycle(lis, "/managed/segment_node", proc)
        assert life.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert diagnostics_state(lis, proc, "unconfigured")
        assert not answered(lis, proc, 100)
        assert not life.change(Transition.TRANSITION_ACTIVATE)  # not from unconfigured

        assert life.change(Transition.TRANSITION_CONFIGURE)
        assert life.state() == State.PRIMARY_STATE_INACTIVE
        assert diagnostics_state(lis, proc, "inactive")
        assert not answered(lis, proc, 101)

        assert life.change(Transition.TRANSITION_ACTIVATE)
        assert life.state() == State.PRIMARY_STATE_ACTIVE
        assert lis.wait_for_subscriber(30, proc)
        before, _, _ = request(lis, array_to_image(camera_image(102), "rgb8", header(102)), proc)
        assert diagnostics_state(lis, proc, "active")

        assert life.change(Transition.TRANSITION_DEACTIVATE)
        assert life.state() == State.PRIMARY_STATE_INACTIVE
        assert not answered(lis, proc, 103)

        assert life.change(Transition.TRANSITION_CLEANUP)
        assert life.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert not answered(lis, proc, 104)

        assert life.change(Transition.TRANSITION_CONFIGURE)  # the model loads again
        assert life.change(Transition.TRANSITION_ACTIVATE)
        assert lis.wait_for_subscriber(30, proc)
        after, _, _ = request(lis, array_to_image(camera_image(105), "rgb8", header(105)), proc)
        # Track ids wait out track_id_reuse_delay across cleanup too: no other object gets them.
        ids_before, ids_after = ({d.id for d in m.detections} for m in (before, after))
        assert ids_before and ids_after and not ids_before & ids_after, (ids_before, ids_after)

        assert life.change(Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert life.state() == State.PRIMARY_STATE_FINALIZED
        assert not answered(lis, proc, 106)
        assert proc.alive()
    finally:
        lis.close()
        proc.stop()
    assert "Traceback" not in proc.output, proc.output


@pytest.mark.parametrize("bad", ["checkpoint", "classes"])
def test_a_failed_configure_over_the_service_stays_unconfigured(ros, checkpoint, tmp_path, bad):
    """A missing checkpoint (the loader's own error) and a class file that is a directory (an
    OSError, which rclpy would swallow): the log and /diagnostics say which transition failed
    and why."""
    if bad == "checkpoint":
        params, words = {"checkpoint": tmp_path / "no_model.pt"}, f"{tmp_path / 'no_model.pt'}"
    else:
        params = {"checkpoint": checkpoint, "classes": tmp_path}
        words = f"class file {tmp_path} is a directory, not a class file"
    proc = NodeProcess(tmp_path, {**params, "autostart": False}, {"__ns": "/broken"})
    lis = Listener("/cam/broken", node="/broken/segment_node")
    try:
        life = Lifecycle(lis, "/broken/segment_node", proc)
        assert not life.change(Transition.TRANSITION_CONFIGURE)
        assert life.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert lis.spin_until(lambda: "configure failed: " in proc.output
                              and words in proc.output, 10, proc), proc.output
        assert "[ERROR]" in next(line for line in proc.output.splitlines() if words in line)
        # Reports made before the transition said OK: wait for one made after it.
        assert lis.spin_until(lambda: (s := latest_status(lis)) is not None
                              and s.level == DiagnosticStatus.ERROR, 10, proc), latest_status(lis)
        status = latest_status(lis)
        assert status.message.startswith("unconfigured: configure failed: ")
        assert words in status.message
        assert lis.diagnostics_values()["device"] == status.hardware_id == "none"
        assert proc.alive()
    finally:
        lis.close()
        proc.stop()


def test_diagnostics_keep_no_stale_frame_age_or_device(ros, checkpoint, tmp_path):
    """frame_age_ms is that of the report window's frames: none ("nan") once the camera is
    silent, and after cleanup no device is reported (the model is freed)."""
    proc = NodeProcess(tmp_path, {"checkpoint": checkpoint, **FAST_ENGINE},
                       {"image": "/cam/stale", "__ns": "/stale"})
    lis = Listener("/cam/stale", node="/stale/segment_node")
    try:
        assert lis.wait_for_subscriber(START_TIMEOUT, proc), proc.output
        life = Lifecycle(lis, "/stale/segment_node", proc)
        msg = array_to_image(camera_image(1), "rgb8",
                             Header(stamp=lis.node.get_clock().now().to_msg(), frame_id="cam"))
        request(lis, msg, proc)

        def value(key: str) -> str:
            return lis.diagnostics_values().get(key, "")

        # The window that processed the frame reports its age (now - stamp, a fresh stamp)...
        assert lis.spin_until(lambda: value("frame_age_ms") not in ("", "nan"), 10, proc), \
            lis.diagnostics_values()
        assert 0 < float(value("frame_age_ms")) < 60_000
        assert value("device") == "cpu"
        # ...and the silent windows after it none.
        assert lis.spin_until(lambda: value("frame_age_ms") == "nan", 5, proc), \
            lis.diagnostics_values()
        assert life.change(Transition.TRANSITION_DEACTIVATE)
        assert life.change(Transition.TRANSITION_CLEANUP)
        assert lis.spin_until(lambda: value("lifecycle_state") == "unconfigured", 10, proc)
        assert (value("device"), value("frame_age_ms")) == ("none", "nan")
        assert latest_status(lis).hardware_id == "none"
    finally:
        lis.close()
        proc.stop()
