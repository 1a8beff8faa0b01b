"""`make demo` end to end: the shipped model, the bundled frames, the node over real DDS."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from saom_ros.model import load_model
from ros_domain import unique_domain_id

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "saom_ros" / "data"


def test_shipped_model_is_small_and_loads():
    path = DATA / "saom_small.pt"
    assert path.stat().st_size < 8 * 2**20
    model = load_model(path)
    assert model.class_head is not None and len(model.class_names) >= 8
    frames = sorted((DATA / "demo_frames").glob("*.png"))
    assert frames and sum(f.stat().st_size for f in frames) < 2 * 2**20


@pytest.mark.slow
def test_demo_segments_bundled_frames_and_real_images(tmp_path: Path):
    out = tmp_path / "demo_output"
    env_domain = str(100 + unique_domain_id())
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "SAOM_DEMO_DOMAIN_ID": env_domain})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    class_names = load_model(DATA / "saom_small.pt").class_names
    frames = sorted((DATA / "demo_frames").glob("*.png"))
    assert [f["frame"] for f in summary["frames"]] == [f.name for f in frames]
    for entry, frame in zip(summary["frames"], frames):
        overlay = cv2.imread(str(out / entry["overlay"]))
        assert overlay.shape == cv2.imread(str(frame)).shape
        assert not (overlay == cv2.imread(str(frame))).all()  # something was drawn
        assert entry["latency_ms"] > 0
        assert entry["detections"], f"nothing found in {frame.name}"
        for det in entry["detections"]:
            assert det["class_name"] in class_names
            assert 0.0 <= det["score"] <= 1.0
            x0, y0, x1, y1 = det["box_xyxy"]
            assert 0 <= x0 <= x1 < overlay.shape[1] and 0 <= y0 <= y1 < overlay.shape[0]
    # Whole objects: on average a synthetic frame holds a handful of objects, not dozens of parts.
    counts = [len(e["detections"]) for e in summary["frames"]]
    assert sum(counts) / len(counts) < 12
    assert len(summary["real_images"]) >= 3
    for entry in summary["real_images"]:
        assert (out / entry["overlay"]).is_file()
