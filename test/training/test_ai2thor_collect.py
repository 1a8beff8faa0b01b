"""The Ai2Thor collector against the real ai2thor Controller and a stand-in simulator process
(fake_ai2thor.py, which speaks Ai2Thor's WSGI protocol: the Unity build cannot exist here)."""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO

import fake_ai2thor
from processes import alive, children, wait_for
from saom_ros.classes import SAOM_CLASSES
from saom_ros.training.ai2thor_collect import CollectConfig, CollectError, collect
from saom_ros.training.ai2thor_controller import controller_kwargs, reset_scene
from saom_ros.training.ai2thor_scene import spawn_seed
from saom_ros.training.collect_config import check_config, resolve_scenes
from saom_ros.training.datasets import CocoInstances, read_image

FAKE = Path(__file__).with_name("fake_ai2thor.py")
SCENES = ("FloorPlan1", "FloorPlan201")


def free_ports(count: int) -> int:
    """First of ``count`` consecutive ports that are free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError("no free ports")


class Simulators:
    """Stand-in simulator processes started by a test; killed when it ends."""

    def __init__(self, tmp_path: Path):
        self.tmp_path, self.procs = tmp_path, []

    def start(self, port: int, *extra: str) -> tuple[subprocess.Popen, Path]:
        log = self.tmp_path / f"actions-{port}-{len(self.procs)}.jsonl"
        proc = subprocess.Popen([sys.executable, str(FAKE), "--port", str(port), "--log",
                                 str(log), "--connect-timeout", "60", *extra])
        self.procs.append(proc)
        return proc, log

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def simulators(tmp_path):
    sims = Simulators(tmp_path)
    yield sims
    sims.close()


def config(output: Path, port: int, **overrides) -> CollectConfig:
    values = dict(output=output, scenes=SCENES, frames_per_scene=4, width=320, height=240,
                  simulator_host="127.0.0.1", simulator_port=port, simulator_timeout=20,
                  simulator_start_timeout=60, randomize_spawn=True, progress=False)
    return CollectConfig(**(values | overrides))


def actions(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An unbroken single-simulator run: (output folder, action log, simulator exit code)."""
    tmp = tmp_path_factory.mktemp("reference")
    sims = Simulators(tmp)
    try:
        port = free_ports(1)
        proc, log = sims.start(port)  # renders 300x300 until told otherwise
        collect(config(tmp / "out", port))
        code = proc.wait(timeout=30)
    finally:
        sims.close()
    return tmp / "out", log, code


def dataset_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "parts" not in p.parts}


def test_dataset_holds_what_the_simulator_drew(reference):
    out, log, code = reference
    assert code == 0  # the simulator got the Controller's stop and ended its session
    coco = COCO(str(out / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SAOM_CLASSES)
    assert coco.getCatIds() == list(range(1, len(SAOM_CLASSES) + 1))
    images = coco.loadImgs(coco.getImgIds())
    assert sorted((i["scene"], i["frame_index"]) for i in images) == \
        [(s, f) for s in SCENES for f in range(4)]
    assert len({i["id"] for i in images}) == 8
    assert coco.dataset["info"]["splits"] == {"train": list(SCENES)}
    class_ids = {n: i + 1 for i, n in enumerate(SAOM_CLASSES)}
    dropped = {"other type": 0, "too small": 0}
    for image in images:
        assert image["split"] == "train" and (image["width"], image["height"]) == (320, 240)
        # Redraw the recorded pose and compare pixels and masks with the stored ones.
        agent = image["agent"]
        boxes = fake_ai2thor.build_scene(image["scene"], image["randomization"]["spawn_seed"])
        rgb, ids = fake_ai2thor.render(boxes, agent["position"], agent["rotation"]["y"],
                                       agent["cameraHorizon"], 320, 240)
        np.testing.assert_array_equal(read_image(out / image["file_name"]), rgb)
        colors = fake_ai2thor.instance_colors(boxes)
        expected = {}
        for b in boxes:
            mask = np.all(ids == colors[b.object_id], axis=-1)
            if b.object_type in class_ids and mask.sum() >= 100:
                expected[b.object_id] = (class_ids[b.object_type], mask)
            elif mask.any():
                dropped["too small" if b.object_type in class_ids else "other type"] += 1
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(anns) >= 1  # min_instances
        assert {a["object_id"] for a in anns} == set(expected)
        for ann in anns:
            category, mask = expected[ann["object_id"]]
            decoded = coco.annToMask(ann).astype(bool)
            assert decoded.shape == (240, 320)
            np.testing.assert_array_equal(decoded, mask)
            assert ann["category_id"] == category
            assert ann["area"] == mask.sum()
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1]
    assert min(dropped.values()) > 0  # both filters were exercised
    sent = actions(log)
    resize = [a for a in sent if a["action"] == "ChangeResolution"]
    assert [(a["x"], a["y"]) for a in resize] == [(320, 240)]  # once: it outlives Reset
    assert all(a["renderInstanceSegmentation"] for a in sent if a["action"] == "Initialize")
    spawns = [a for a in sent if a["action"] == "InitialRandomSpawn"]
    assert [s["randomSeed"] for s in spawns] == \
        [spawn_seed(config(out, 0), s) for s in SCENES]


def test_dataset_reads_back_as_samples(reference):
    out, _, _ = reference
    coco = COCO(str(out / "annotations.json"))
    dataset = CocoInstances(out / "annotations.json", class_names=SAOM_CLASSES)
    assert len(dataset) == 8 and dataset.class_names == SAOM_CLASSES
    for sample in dataset:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=sample.image_id))
        assert sample.image.shape == (240, 320, 3) and sample.masks.shape == (len(anns), 240, 320)
        assert list(sample.class_ids) == [a["category_id"] for a in anns]
        for mask, ann in zip(sample.masks, anns):
            np.testing.assert_array_equal(mask, mask_utils.decode(ann["segmentation"]) > 0)


def test_resume_after_a_crash_gives_the_unbroken_result(reference, simulators, tmp_path):
    ref_out, ref_log, _ = reference
    sent = actions(ref_log)
    # Crash the simulator when it receives the last teleport: mid-way through FloorPlan201.
    die_after = max(i for i, a in enumerate(sent) if a["action"] == "TeleportFull") + 1
    port = free_ports(1)
    simulators.start(port, "--die-after", str(die_after))
    out = tmp_path / "out"
    cfg = config(out, port, checkpoint_every=1, simulator_timeout=2)
    with pytest.raises(CollectError, match="FloorPlan201"):
        collect(cfg)
    part = json.loads((out / "parts" / "FloorPlan201.json").read_text())
    assert 0 < len(part["frames_done"]) < 4
    partial = COCO(str(out / "annotations.json"))  # what finished is already usable
    assert len(partial.getImgIds()) == 4 + len(part["frames_done"])

    port = free_ports(1)
    proc, log = simulators.start(port)
    collect(dataclasses.replace(cfg, simulator_port=port, simulator_timeout=20))
    assert proc.wait(timeout=30) == 0
    assert dataset_files(out) == dataset_files(ref_out)
    resumed = actions(log)
    assert {a["sceneName"] for a in resumed if a["action"] == "Reset"} == {"FloorPlan201_physics"}
    assert sum(a["action"] == "TeleportFull" for a in resumed) < \
        sum(a["action"] == "TeleportFull" for a in sent) / 2


def test_resume_refuses_other_settings(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    with pytest.raises(CollectError, match="min_area 100 vs now 5"):
        collect(config(out, 1, min_area=5))


def test_workers_shard_scenes_over_simulators(reference, simulators, tmp_path):
    port = free_ports(2)
    runs = [simulators.start(port + k) for k in range(2)]  # worker k uses port + k
    out = tmp_path / "out"
    collect(config(out, port, workers=2))
    assert [proc.wait(timeout=30) for proc, _ in runs] == [0, 0]
    resets = [{a["sceneName"] for a in actions(log) if a["action"] == "Reset"} for _, log in runs]
    assert resets == [{"FloorPlan1_physics"}, {"FloorPlan201_physics"}]
    assert dataset_files(out) == dataset_files(reference[0])


@pytest.mark.slow
def test_workers_die_with_a_killed_collector_and_stop_their_simulators(simulators, tmp_path):
    port = free_ports(2)
    sims = [simulators.start(port + k)[0] for k in range(2)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "saom_ros.training.cli", "collect", "--simulator-host",
         "127.0.0.1", "--simulator-port", str(port), "--workers", "2", "--scenes",
         ",".join(SCENES), "--frames-per-scene", "100000", "--width", "64", "--height", "48",
         "--output", str(tmp_path / "out"), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = wait_for(lambda: len(children(proc.pid, "spawn_main")) == 2
                           and children(proc.pid, "spawn_main"), 120)
        assert workers, "the collector workers never started"
        assert wait_for(lambda: list((tmp_path / "out/images").rglob("*.png")), 60)  # collecting
    finally:
        proc.kill()
        proc.wait()
    assert wait_for(lambda: not any(alive(pid) for pid in workers), 5), \
        f"orphaned collector workers: {[pid for pid in workers if alive(pid)]}"
    for sim in sims:  # no simulator is left waiting for its worker
        sim.wait(timeout=20)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_launched_simulator_dies_with_its_sigkilled_owner(tmp_path, workers):
    """The simulator the Controller starts (a local build; this one never connects) ends with the
    process that owns the Controller, killed as the OOM killer does: the collector or a worker."""
    build = tmp_path / "thor-Linux64"
    build.write_text("#!/bin/sh\nexec sleep 300\n")
    build.chmod(0o755)
    proc = subprocess.Popen(
        cli("--local-executable-path", str(build), "--x-display", ":99", "--workers",
            str(workers), "--scenes", ",".join(SCENES), "--frames-per-scene", "2", "--output",
            str(tmp_path / "out"), "--no-progress", "--simulator-start-timeout", "120"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path)})  # ai2thor logs into ~/.ai2thor
    sims = []
    try:
        owners = [proc.pid] if workers == 1 else \
            wait_for(lambda: len(children(proc.pid, "spawn_main")) == 2
                     and children(proc.pid, "spawn_main"), 120)
        sims = wait_for(lambda: len(found := [pid for owner in owners
                                               for pid in children(owner, "sleep 300")])
                        == workers and found, 120)
        assert owners and sims, "the simulators never started"
        owned = children(owners[0], "sleep 300")
        os.kill(owners[0], signal.SIGKILL)
        assert wait_for(lambda: not any(alive(pid) for pid in owned), 5), \
            f"simulators outlived their SIGKILLed owner: {[p for p in owned if alive(p)]}"
    finally:
        proc.kill()
        proc.wait()
        for pid in sims:  # the other worker's, or any the test failed on
            if not wait_for(lambda: not alive(pid), 20):
                os.kill(pid, signal.SIGKILL)


def test_a_failing_worker_does_not_lose_the_others_work(simulators, tmp_path):
    port = free_ports(2)
    simulators.start(port)
    simulators.start(port + 1, "--die-after", "8")  # worker 1 crashes inside its scene
    out = tmp_path / "out"
    with pytest.raises(CollectError) as error:
        collect(config(out, port, workers=2, simulator_timeout=2))
    message = str(error.value)
    assert "run the same command again to resume" in message
    assert "worker 1: " in message and "FloorPlan201" in message and "worker 0" not in message
    coco = COCO(str(out / "annotations.json"))
    assert {i["scene"] for i in coco.dataset["images"]} == {"FloorPlan1"}
    assert len(coco.getImgIds()) == 4


def test_command_line(simulators, tmp_path):
    port = free_ports(1)
    proc, log = simulators.start(port)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "saom_ros.training.cli", "collect", "--simulator-host",
         "127.0.0.1", "--simulator-port", str(port), "--scenes", "FloorPlan1,FloorPlan201",
         "--frames-per-scene", "4", "--width", "320", "--height", "240", "--output", str(out),
         "--randomize-materials", "--randomize-lighting", "--classes", "Mug,Sofa,Vase,Pan",
         "--min-area", "20", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert proc.wait(timeout=30) == 0
    coco = COCO(str(out / "annotations.json"))
    assert [c["name"] for c in coco.dataset["categories"]] == ["Mug", "Sofa", "Vase", "Pan"]
    assert len(coco.getImgIds()) == 8
    assert all(a["area"] >= 20 for a in coco.dataset["annotations"])
    sent = actions(log)
    materials = [a for a in sent if a["action"] == "RandomizeMaterials"]
    assert len(materials) == 8 and all(a["useTrainMaterials"] and not a["useTestMaterials"]
                                       for a in materials)
    assert sum(a["action"] == "RandomizeLighting" for a in sent) == 8
    assert not any(a["action"] == "InitialRandomSpawn" for a in sent)


def test_frames_without_enough_instances_are_skipped(simulators, tmp_path):
    port = free_ports(1)
    proc, log = simulators.start(port)
    out = tmp_path / "out"
    with pytest.raises(CollectError, match=r"every frame was skipped \(2 in 1 scene"):
        collect(config(out, port, scenes=("FloorPlan301",), frames_per_scene=2,
                       min_instances=100, max_pose_attempts=3))
    assert proc.wait(timeout=30) == 0
    assert COCO(str(out / "annotations.json")).getImgIds() == []
    part = json.loads((out / "parts" / "FloorPlan301.json").read_text())
    assert part["frames_done"] == part["skipped_frames"] == [0, 1]
    assert sum(a["action"] == "TeleportFull" for a in actions(log)) == 2 * 3
    assert not (out / "images").exists()


def test_command_line_rejects_contradictory_settings(tmp_path, capsys):
    from saom_ros.training.cli import main

    assert main(["collect", "--output", str(tmp_path), "--scenes", "FloorPlan1"]) == 2
    assert "exactly one of --simulator-host/--simulator-port" in capsys.readouterr().err
    assert main(["collect", "--output", str(tmp_path), "--split", "val", "--scenes",
                 "FloorPlan1", "--simulator-port", "1"]) == 2
    assert "either scenes or a split" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_no_simulator_is_a_clear_error(tmp_path):
    port = free_ports(1)
    with pytest.raises(CollectError, match=f"connect to 127.0.0.1:{port} within 1 s"):
        collect(config(tmp_path / "out", port, simulator_start_timeout=1))


def test_controller_arguments_per_simulator_mode(tmp_path):
    import ai2thor.platform
    import ai2thor.wsgi_server

    base = dict(output=tmp_path, width=320, height=240)
    running = controller_kwargs(CollectConfig(**base, simulator_host="10.0.0.2",
                                              simulator_port=9000), worker=3)
    assert running.items() >= {"start_unity": False, "host": "10.0.0.2", "port": 9003,
                            "server_class": ai2thor.wsgi_server.WsgiServer, "width": 320,
                            "height": 240, "renderInstanceSegmentation": True}.items()
    cloud = controller_kwargs(CollectConfig(**base, platform="CloudRendering"))
    assert cloud["server_class"] is ai2thor.wsgi_server.WsgiServer  # notices a crashed build
    assert cloud["platform"] is ai2thor.platform.CloudRendering and "x_display" not in cloud
    x11 = controller_kwargs(CollectConfig(**base, platform="Linux64", x_display=":1"))
    assert x11["platform"] is ai2thor.platform.Linux64 and x11["x_display"] == ":1"
    build = tmp_path / "thor-Linux64"
    with pytest.raises(CollectError, match=f"{build} does not exist"):
        controller_kwargs(CollectConfig(**base, local_executable_path=str(build)))
    build.write_text("#!/bin/sh\n")
    with pytest.raises(CollectError, match="not executable"):
        controller_kwargs(CollectConfig(**base, local_executable_path=str(build)))
    os.chmod(build, 0o755)
    local = controller_kwargs(CollectConfig(**base, local_executable_path=str(build),
                                            x_display=":0"))
    assert local["local_executable_path"] == str(build) and local["x_display"] == ":0"
    assert "start_unity" not in local and "platform" not in local
    with pytest.raises(ValueError, match="exactly one"):
        controller_kwargs(CollectConfig(**base))
    with pytest.raises(ValueError, match="exactly one"):
        controller_kwargs(CollectConfig(**base, simulator_port=9000, platform="CloudRendering"))


def test_launched_build_failures_are_clear_errors(tmp_path, monkeypatch):
    # A real executable started by the real Controller; it dies at once, as a broken build does.
    build = tmp_path / "thor-Linux64"
    build.write_text("#!/bin/sh\nexit 3\n")
    os.chmod(build, 0o755)
    cfg = CollectConfig(output=tmp_path / "out", scenes=("FloorPlan1",), progress=False,
                        local_executable_path=str(build), simulator_start_timeout=30)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # ai2thor logs the build's output to ~/.ai2thor
    monkeypatch.setattr("ai2thor.platform.Linux64._valid_x_displays", lambda w, h: [])
    with pytest.raises(CollectError, match="renders on an X server and none was found"):
        collect(cfg)
    with pytest.raises(CollectError, match=f"could not start the local build {build}: .*exited 3"):
        collect(dataclasses.replace(cfg, x_display=":99"))


def test_scene_selection(tmp_path):
    def scenes(**kw):
        return resolve_scenes(CollectConfig(output=tmp_path, **kw))

    assert scenes(scenes=("FloorPlan201_physics", "FloorPlan3")) == ["FloorPlan3", "FloorPlan201"]
    assert scenes(room_types=("bathroom",), split="val") == \
        [f"FloorPlan{n}" for n in range(421, 426)]
    assert len(scenes()) == 120
    with pytest.raises(ValueError, match="not an iTHOR scene"):
        scenes(scenes=("FloorPlan31",))
    with pytest.raises(ValueError, match="either scenes or a split"):
        scenes(scenes=("FloorPlan1",), split="train")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "saom_ros.training.cli", "collect", *args]


def test_a_folder_the_collector_did_not_make_is_left_alone(tmp_path):
    out = tmp_path / "d"
    (out / "images").mkdir(parents=True)
    foreign = '{"images":[{"id":1}],"annotations":[],"categories":[{"id":1,"name":"x"}]}'
    (out / "annotations.json").write_text(foreign)
    with pytest.raises(CollectError, match="already holds annotations.json and images but no "
                                           "record of the collector"):
        collect(config(out, free_ports(1), simulator_start_timeout=1))
    assert (out / "annotations.json").read_text() == foreign
    assert sorted(p.name for p in out.iterdir()) == ["annotations.json", "images"]


def test_a_run_that_changes_nothing_leaves_annotations_alone(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    # Same content, other bytes: a rewrite would show.
    spaced = json.dumps(json.loads((out / "annotations.json").read_text()), indent=1)
    (out / "annotations.json").write_text(spaced)
    collect(config(out, 1))  # nothing left to collect: no simulator needed
    assert (out / "annotations.json").read_text() == spaced
    # A run that fails before collecting anything writes no dataset.
    empty = tmp_path / "empty"
    with pytest.raises(CollectError):
        collect(config(empty, free_ports(1), simulator_start_timeout=1))
    assert not (empty / "annotations.json").exists()
    collect_again = config(empty, free_ports(1), simulator_start_timeout=1, scenes=("FloorPlan2",))
    with pytest.raises(CollectError, match="within 1 s"):  # not refused: nothing was collected
        collect(collect_again)


@pytest.mark.parametrize("fault, cause", [("no-objects", "metadata has no 'objects'"),
                                          ("no-agent", "'agent'"),
                                          ("short-ids", "image_ids holds 306800 bytes, not "
                                                        "320x240 pixels")])
def test_malformed_simulator_events_name_scene_and_frame(reference, simulators, tmp_path, fault,
                                                         cause):
    sent = actions(reference[1])
    first_teleport = next(i for i, a in enumerate(sent) if a["action"] == "TeleportFull") + 1
    port = free_ports(1)
    proc, _ = simulators.start(port, "--fault", f"{fault}@{first_teleport}")
    with pytest.raises(CollectError, match=f"scene FloorPlan1 frame 0: .*{cause}"):
        collect(config(tmp_path / "out", port))
    assert proc.wait(timeout=30) == 0  # told to stop, not left waiting


def test_a_crash_during_a_scene_reset_names_the_scene(tmp_path):
    from ai2thor.exceptions import UnityCrashException

    class CrashingController:
        def reset(self, scene):
            raise UnityCrashException("Unity process exited -11")

    with pytest.raises(CollectError, match="could not load scene FloorPlan7: "
                                           "UnityCrashException: Unity process exited -11"):
        reset_scene(CrashingController(), CollectConfig(output=tmp_path), "FloorPlan7")


def _limit_file_size(size: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_is_a_clear_error_that_loses_nothing(simulators, tmp_path, workers):
    port = free_ports(2)
    for k in range(workers):
        simulators.start(port + k)
    out = tmp_path / "out"
    args = ["--simulator-host", "127.0.0.1", "--simulator-port", str(port), "--scenes",
            ",".join(SCENES), "--frames-per-scene", "4", "--width", "320", "--height", "240",
            "--checkpoint-every", "2", "--workers", str(workers), "--output", str(out),
            "--no-progress", "--simulator-timeout", "5"]
    # Files stop at 5000 bytes (EFBIG, as a full disk gives ENOSPC): images and the parts after
    # 2 frames fit, the parts after 4 frames and the merged annotations.json do not.
    result = subprocess.run(cli(*args), capture_output=True, text=True, timeout=120,
                            preexec_fn=_limit_file_size(5000))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "collection incomplete" in result.stderr
    assert f"could not write {out / 'parts' / 'FloorPlan1.json'}: File too large" \
        in result.stderr
    assert f"could not write {out / 'annotations.json'}: File too large" in result.stderr
    if workers == 2:  # each worker's own error, not only the merge's
        assert f"worker 0: could not write {out}" in result.stderr
        assert f"worker 1: could not write {out}" in result.stderr
    parts = [json.loads(p.read_text()) for p in (out / "parts").glob("*.json")]
    assert any(p["frames_done"] == [0, 1] for p in parts)  # saved before the disk filled
    for k in range(workers):  # with room again, the same command finishes the dataset
        simulators.start(port + k)
    result = subprocess.run(cli(*args), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(COCO(str(out / "annotations.json")).getImgIds()) == 8


def test_frames_the_simulator_refuses_are_skipped_with_its_reason(simulators, tmp_path, caplog):
    port = free_ports(1)
    simulators.start(port, "--refuse", "TeleportFull")
    with pytest.raises(CollectError, match="every frame was skipped"):
        collect(config(tmp_path / "out", port, scenes=("FloorPlan1",), frames_per_scene=2,
                       max_pose_attempts=2))
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skips == [f"FloorPlan1 frame {i}: skipped after 2 pose attempts: the last "
                     "TeleportFull failed: TeleportFull refused (--refuse)" for i in (0, 1)]


@pytest.mark.parametrize("overrides, message", [
    (dict(min_area=-1), "--min-area -1: must be pixels, >= 1"),
    (dict(min_instances=0), "--min-instances 0: must be >= 1"),
    (dict(field_of_view=0.0), "--field-of-view 0.0: must be degrees, > 0 and < 180"),
    (dict(grid_size=-1.0), "--grid-size -1.0: must be metres, > 0"),
    (dict(horizon_range=(61.0, 89.0)), "--horizon-range '61,89': must be MIN <= MAX within "
                                       "-30..60"),
    (dict(simulator_timeout=0.0), "--simulator-timeout 0.0: must be seconds, > 0"),
    (dict(simulator_start_timeout=-1.0), "--simulator-start-timeout -1.0: must be seconds"),
    (dict(room_types=()), "--room-types '': must be not empty"),
])
def test_out_of_range_settings_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        check_config(CollectConfig(output=tmp_path, **overrides))


@pytest.mark.parametrize("option", ["--scenes=", "--room-types=", "--classes= ,"])
def test_empty_name_lists_are_refused(tmp_path, capsys, option):
    from saom_ros.training.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["collect", "--output", str(tmp_path / "out"), "--simulator-port", "1", option])
    assert exited.value.code == 2
    assert f"argument {option.split('=')[0]}: expected comma-separated names" \
        in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_resume_refuses_another_selection(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    before = dataset_files(out)
    with pytest.raises(CollectError, match=r"this run leaves out FloorPlan201; --frames-per-scene"
                                           r" 2, the folder's 4\. .*--extend"):
        collect(config(out, 1, scenes=("FloorPlan1",), frames_per_scene=2))
    with pytest.raises(CollectError, match=r"holds a collection of 2 scene\(s\) \(train\): this "
                                           r"run adds FloorPlan26, .* \(test\)"):
        collect(config(out, 1, scenes=(), room_types=("kitchen",), split="test"))
    with pytest.raises(CollectError, match="--extend cannot lower --frames-per-scene to 2"):
        collect(config(out, 1, frames_per_scene=2, extend=True))
    # A folder from before records: its parts stand for the selection.
    (out / "collection.json").unlink()
    with pytest.raises(CollectError, match="this run leaves out FloorPlan201"):
        collect(config(out, 1, scenes=("FloorPlan1",)))
    collect(config(out, 1))
    assert json.loads((out / "collection.json").read_text()) == \
        {"scenes": list(SCENES), "frames_per_scene": 4}
    assert dataset_files(out) == before


def test_extend_adds_scenes_and_frames(reference, simulators, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    port = free_ports(1)
    proc, log = simulators.start(port)
    collect(config(out, port, scenes=("FloorPlan301",), frames_per_scene=5, extend=True))
    assert proc.wait(timeout=30) == 0
    coco = COCO(str(out / "annotations.json"))
    frames = sorted((i["scene"], i["frame_index"]) for i in coco.dataset["images"])
    assert frames == [(s, f) for s in (*SCENES, "FloorPlan301") for f in range(5)]
    assert json.loads((out / "collection.json").read_text()) == \
        {"scenes": [*SCENES, "FloorPlan301"], "frames_per_scene": 5}
    assert coco.dataset["info"]["collector"]["frames_per_scene"] == 5
    kept = dataset_files(reference[0])  # the frames already there are untouched
    assert {k: v for k, v in dataset_files(out).items() if k in kept and k.startswith("images")} \
        == {k: v for k, v in kept.items() if k.startswith("images")}


@pytest.mark.parametrize("signum, workers", [
    (signal.SIGTERM, 1), (signal.SIGINT, 1),
    pytest.param(signal.SIGTERM, 2, marks=pytest.mark.slow)])
def test_a_stop_signal_merges_what_finished(simulators, tmp_path, signum, workers):
    port = free_ports(workers)
    sims = [simulators.start(port + k)[0] for k in range(workers)]
    out = tmp_path / "out"
    proc = subprocess.Popen(
        cli("--simulator-host", "127.0.0.1", "--simulator-port", str(port), "--workers",
            str(workers), "--scenes", ",".join(SCENES), "--frames-per-scene", "100000",
            "--width", "64", "--height", "48", "--checkpoint-every", "5", "--output", str(out),
            "--no-progress"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: list((out / "parts").glob("*.json")), 120), "nothing collected"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "run the same command again" \
        in err and "Traceback" not in err
    parts = [json.loads(p.read_text()) for p in (out / "parts").glob("*.json")]
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == sum(len(p["images"]) for p in parts) > 0
    for sim in sims:  # each simulator was told to stop
        assert sim.wait(timeout=30) == 0
