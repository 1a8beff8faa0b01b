"""Does dropping the engine, as segment_node's cleanup transition does, give its GPU memory back?

Loads the packaged model and an untrained vit_b three times each on CUDA, segments one 640x480
frame, drops the engine and empties torch's cache (what cleanup does), and prints the memory
still allocated above what was allocated before. Needs a CUDA device; no ROS.

    .venv/bin/python bench/engine_cleanup_gpu.py
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

from bench_args import missing_cuda
from saom_ros.engine_loader import load_engine
from saom_ros.model import ModelConfig, build_saom, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MB = 2 ** 20


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    if reason := missing_cuda():
        print(f"engine_cleanup_gpu: {reason}", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory()  # a vit_b checkpoint is 360 MB: removed on exit
    vit_b = Path(tmp.name) / "vit_b.pt"
    save_checkpoint(vit_b, build_saom(ModelConfig.preset("vit_b")).eval())
    frame = cv2.resize(cv2.cvtColor(cv2.imread(str(ROOT / "saom_ros/data/demo_frames/frame_00.png")),
                                    cv2.COLOR_BGR2RGB), (640, 480))
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    base = torch.cuda.memory_allocated()
    for name, path in (("packaged", ""), ("vit_b", str(vit_b))):
        for cycle in range(3):
            start = time.monotonic()
            loaded = load_engine(path, device="cuda", explicit={"points_per_side": 16})
            loaded.engine(frame)
            torch.cuda.synchronize()
            held = torch.cuda.memory_allocated() - base
            del loaded  # cleanup: the node drops its engine ...
            torch.cuda.empty_cache()  # ... and empties the cache
            left = torch.cuda.memory_allocated() - base
            print(f"{name} cycle {cycle}: held {held / MB:.1f} MiB, after cleanup {left / MB:.1f} "
                  f"MiB ({time.monotonic() - start:.1f} s)")
    torch._C._cuda_clearCublasWorkspaces()  # what is left is torch's cuBLAS workspace
    print(f"after clearing cuBLAS workspaces: {(torch.cuda.memory_allocated() - base) / MB:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
