"""The image encoder on CUDA: the attention form measured fastest, replayed from a CUDA graph.

The encoder always sees one padded [1, 3, S, S] image, so one CUDA graph, captured on the first
frame, replays all of its kernels (hundreds for vit_b) with one launch per frame. This removes
the CPU's launch time from the frame and the GPU's idle gaps between small kernels.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch
from segment_anything.modeling.image_encoder import ImageEncoderViT

from saom_ros.cuda_graphs import capture
from saom_ros.encoder_attention import ATTENTION_FORMS, fuse_attention


def _median_seconds(fn: Callable[[], object], sync: Callable[[], None], reps: int) -> float:
    fn()  # first call: lazy initialisation, kernel selection
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def choose_attention_form(encoder: ImageEncoderViT, images: torch.Tensor,
                          reps: int = 3) -> dict[str, float]:
    """Time ``encoder`` on ``images`` with each attention form, leave it in the fastest and
    return the median seconds per form (which form wins depends on the device and head size)."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    times = {}
    for form in ATTENTION_FORMS:
        fuse_attention(encoder, form)
        times[form] = _median_seconds(lambda: encoder(images), sync, reps)
    fuse_attention(encoder, min(times, key=times.get))
    return times


class CudaEncoder:
    """Calls ``encoder`` (inference only) through a CUDA graph captured per input shape, after
    choosing its attention form. ``run`` is what the graph captures: the encoder itself or a
    torch.compile of it. If capture fails ``run`` is called directly, with a warning."""

    def __init__(self, encoder: ImageEncoderViT,
                 run: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        self.encoder = encoder
        self.run = run or encoder
        self.form_seconds: dict[str, float] = {}
        self._graphs: dict[tuple, Optional[tuple[torch.cuda.CUDAGraph, torch.Tensor,
                                                 torch.Tensor]]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        key = (tuple(images.shape), images.dtype, images.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(images)
        captured = self._graphs[key]
        if captured is None:
            return self.run(images)
        graph, static_in, static_out = captured
        static_in.copy_(images)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def _capture(self, images: torch.Tensor):
        if not self.form_seconds:
            self.form_seconds = choose_attention_form(self.encoder, images)
        static_in = images.clone()
        # With torch.compile the warm-up run compiles, outside the capture.
        captured = capture(lambda: self.run(static_in), images.device, "image encoder")
        return None if captured is None else (captured[0], static_in, captured[1])
