"""The decoder's token stage on CUDA, replayed from CUDA graphs.

Everything mode runs the token stage (``decoder.run_tokens``: the two-way transformer and the
IoU head) once per prompt batch. Its ~200 kernels are small, so launching them from Python
costs more than running them: on an H100 a vit_b pass of 1 prompt took 7.7 ms and one of 256
prompts 8.5 ms. A CUDA graph replays them with one launch. Graphs have fixed shapes, so prompts
are padded to a bucket (a power of two, at least MIN_BUCKET); prompts are independent in the
decoder, so the padding rows change nothing in the others.

A replay overwrites the outputs of the previous replay of the same graph, and graphs sharing a
memory pool may overwrite each other's. Callers queue the next batch's token stage before they
read this one's outputs (``candidates.decode_candidates``), so calls alternate between two
buffers, each with its own graphs and pool: a call's outputs stay valid until the call after
next.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from saom_ros.cuda_graphs import capture
from saom_ros.decoder import DecoderTokens, run_tokens
from saom_ros.model import Saom

# The smallest prompt bucket: below it a pass costs the same on a GPU.
MIN_BUCKET = 16
BUFFERS = 2


def prompt_bucket(prompts: int) -> int:
    """The padded batch that ``prompts`` prompts run in: the next power of two, at least
    MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << (max(1, prompts) - 1).bit_length())


class _Graph(NamedTuple):
    graph: torch.cuda.CUDAGraph
    embedding: torch.Tensor  # [1, C, h, w] static inputs, copied into before each replay
    pe: torch.Tensor
    sparse: torch.Tensor  # [bucket, T, C]
    dense: torch.Tensor  # [1, C, h, w]: the same for every prompt
    out: DecoderTokens  # [bucket, ...] outputs, overwritten by each replay


class CudaTokenStage:
    """``Saom.decode_tokens`` (same signature and results) for one image embedding and point
    prompts, with the token stage replayed from CUDA graphs captured per prompt bucket and
    buffer. Falls back to running it directly (inputs it does not cover, or a failed capture,
    with a warning)."""

    def __init__(self, model: Saom) -> None:
        self.model = model
        self._graphs: dict[tuple, Optional[_Graph]] = {}
        self._pools: list = []
        self._calls = 0

    def __call__(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                 point_labels: torch.Tensor) -> DecoderTokens:
        pe, sparse, dense = self.model.prompt_inputs(point_coords, point_labels)
        decoder = self.model.sam.mask_decoder
        shared = image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0)
        if not shared or torch.is_grad_enabled():  # one graph input per prompt: not covered
            return run_tokens(decoder, image_embeddings, pe, sparse, dense)
        n = sparse.shape[0]
        buffer = self._calls % BUFFERS
        self._calls += 1
        key = (prompt_bucket(n), buffer, tuple(image_embeddings.shape), tuple(sparse.shape[1:]),
               sparse.dtype, image_embeddings.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(key[0], buffer, image_embeddings, pe, sparse,
                                              dense[:1])
        graph = self._graphs[key]
        if graph is None:
            return run_tokens(decoder, image_embeddings, pe, sparse, dense)
        graph.embedding.copy_(image_embeddings)
        graph.pe.copy_(pe)
        graph.sparse[:n].copy_(sparse)
        graph.dense.copy_(dense[:1])
        graph.graph.replay()
        out = graph.out
        return DecoderTokens(out.tokens[:n], out.image[:n], out.grid, out.iou_pred[:n])

    def prepare(self, image_embeddings: torch.Tensor, largest: int) -> None:
        """Capture every bucket's graphs up to the one of ``largest`` prompts, in both buffers,
        so that no camera frame waits for a capture."""
        device = image_embeddings.device
        size = MIN_BUCKET
        while size <= prompt_bucket(largest):
            coords = torch.zeros(size, 1, 2, device=device)
            labels = torch.ones(size, 1, dtype=torch.int, device=device)
            for _ in range(BUFFERS):
                self(image_embeddings, coords, labels)
            size *= 2

    def _capture(self, bucket: int, buffer: int, embedding: torch.Tensor, pe: torch.Tensor,
                 sparse: torch.Tensor, dense: torch.Tensor) -> Optional[_Graph]:
        while len(self._pools) < BUFFERS:
            self._pools.append(torch.cuda.graph_pool_handle())
        # Padding rows start as copies of the first prompt: any finite values will do.
        static = (embedding.clone(), pe.clone(),
                  sparse[:1].expand(bucket, -1, -1).clone(), dense.clone())
        decoder = self.model.sam.mask_decoder
        captured = capture(lambda: run_tokens(decoder, static[0], static[1], static[2],
                                              static[3].expand(bucket, -1, -1, -1)),
                           embedding.device, f"decoder token stage ({bucket} prompts)",
                           self._pools[buffer])
        return None if captured is None else _Graph(captured[0], *static, captured[1])
