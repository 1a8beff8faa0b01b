"""The Ai2Thor collector against the real ai2thor Controller and a stand-in simulator process
(fake_ai2thor.py, which speaks Ai2Thor's WSGI protocol: the Unity build cannot exist here)."""
from __future__ import annotations

import dataclasses
import json
import os
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
from saom_ros.training.ai2thor_controller import controller_kwargs
from saom_ros.training.ai2thor_scene import spawn_seed
from saom_ros.training.collect_config import resolve_scenes
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
    import shutil
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
    collect(config(out, port, scenes=("FloorPlan301",), frames_per_scene=2, min_instances=100,
                   max_pose_attempts=3))
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
