"""Fused Triton kernels for the per-prompt image side of the decoder's two-way transformer.

With ~1000 prompts the image side is a [B, P, C] tensor (4096 pixels x 256 channels per prompt
for SAM), and in plain PyTorch each step over it (scores, softmax, weighted sum, residual, layer
norm) is a separate pass through memory. These kernels make one pass per attention:

- ``image_to_tokens``: for a block of pixels of one prompt, the scores against that prompt's
  folded token keys, the softmax over each head's tokens, the weighted sum of the folded values,
  the residual and the layer norm that follows it (``norm4``), written once.
- ``tokens_to_image``: for one prompt, the attention of its folded token queries over all its
  pixels with an online softmax (flash-attention style), read once; the pixels are split into
  SPLITS parts that run in parallel and are combined at the end (flash-decoding).

Block sizes, warps and pipeline stages are autotuned on the first call for each image size.

The token side (a few rows per prompt) stays in PyTorch (``saom_ros.decoder``), which also folds
the projections into the operands these kernels take. Only for CUDA tensors without gradients.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the decoder keeps its PyTorch path
    triton = None

# Triton's interpreter runs the kernels on CPU tensors (how the tests check them without a GPU).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRET_BLOCK = 64  # the one configuration the interpreter runs
SPLITS = 4  # parallel parts of each prompt's pixels in tokens_to_image


def available(image: torch.Tensor, channels: int, heads: int) -> bool:
    """Whether the fused kernels can run the image side ``image``. Not under torch.compile,
    which compiles the decoder's PyTorch form instead."""
    return (triton is not None and (image.is_cuda or INTERPRET) and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and channels >= 16 and channels & (channels - 1) == 0
            and heads & (heads - 1) == 0)


def padded_tokens(tokens: int) -> int:
    """Token rows per head in the kernels' operands: the next power of two (at least 2)."""
    return max(2, 1 << (tokens - 1).bit_length())


def _tuned(kernel, key: list[str]):
    """``kernel`` autotuned over block size, warps and stages (as it is, under the interpreter)."""
    if INTERPRET:
        return kernel
    # The winners on an H100 among 18 (16/32/64 pixels, 4/8 warps, 1-3 stages) were 64-4-2
    # (image_to_tokens) and 32-4-3 (tokens_to_image); a few around them keep the first call
    # short (each is compiled and timed once per process).
    configs = [triton.Config({"BLOCK": block}, num_warps=warps, num_stages=stages)
               for block, warps, stages in ((32, 4, 2), (32, 4, 3), (64, 4, 2), (64, 4, 3),
                                            (64, 8, 2))]
    return triton.autotune(configs, key=key)(kernel)


if triton is not None:
    @triton.jit
    def _image_to_tokens_kernel(x_ptr, pe_ptr, k_ptr, bias_ptr, v_ptr, w_ptr, b_ptr, out_ptr,
                                n_pixels, stride_xb, eps,
                                C: tl.constexpr, HEADS: tl.constexpr, TPAD: tl.constexpr,
                                BLOCK: tl.constexpr):
        prompt = tl.program_id(0)
        pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ch = tl.arange(0, C)
        rows = tl.arange(0, HEADS * TPAD)
        inside = pix[:, None] < n_pixels
        x = tl.load(x_ptr + prompt * stride_xb + pix[:, None] * C + ch[None, :], mask=inside,
                    other=0.0)
        pe = tl.load(pe_ptr + pix[:, None] * C + ch[None, :], mask=inside, other=0.0)
        keys = tl.load(k_ptr + prompt * HEADS * TPAD * C + rows[:, None] * C + ch[None, :])
        values = tl.load(v_ptr + prompt * HEADS * TPAD * C + rows[:, None] * C + ch[None, :])
        bias = tl.load(bias_ptr + prompt * HEADS * TPAD + rows)  # -inf on padding rows
        scores = tl.dot(x + pe, tl.trans(keys)) + bias[None, :]  # [BLOCK, HEADS * TPAD]
        s = tl.reshape(scores, (BLOCK, HEADS, TPAD))
        e = tl.exp(s - tl.max(s, 2)[:, :, None])
        a = tl.reshape(e / tl.sum(e, 2)[:, :, None], (BLOCK, HEADS * TPAD))
        y = x.to(tl.float32) + tl.dot(a.to(values.dtype), values)
        mean = tl.sum(y, 1) / C
        d = y - mean[:, None]
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, 1) / C + eps)
        w = tl.load(w_ptr + ch).to(tl.float32)
        b = tl.load(b_ptr + ch).to(tl.float32)
        out = d * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(out_ptr + prompt * n_pixels * C + pix[:, None] * C + ch[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _tokens_to_image_kernel(q_ptr, x_ptr, pe_ptr, top_ptr, total_ptr, acc_ptr, n_pixels,
                                C: tl.constexpr, ROWS: tl.constexpr, SPLIT: tl.constexpr,
                                BLOCK: tl.constexpr):
        prompt = tl.program_id(0)
        part = tl.program_id(1)
        ch = tl.arange(0, C)
        rows = tl.arange(0, ROWS)
        q = tl.load(q_ptr + prompt * ROWS * C + rows[:, None] * C + ch[None, :])
        top = tl.full((ROWS,), float("-inf"), tl.float32)
        total = tl.zeros((ROWS,), tl.float32)
        acc = tl.zeros((ROWS, C), tl.float32)
        span = tl.cdiv(tl.cdiv(n_pixels, SPLIT), BLOCK) * BLOCK
        end = tl.minimum(n_pixels, (part + 1) * span)
        for start in range(part * span, end, BLOCK):
            pix = start + tl.arange(0, BLOCK)
            inside = pix < end
            x = tl.load(x_ptr + prompt * n_pixels * C + pix[:, None] * C + ch[None, :],
                        mask=inside[:, None], other=0.0)
            pe = tl.load(pe_ptr + pix[:, None] * C + ch[None, :], mask=inside[:, None], other=0.0)
            s = tl.dot(q, tl.trans(x + pe))  # [ROWS, BLOCK]
            s = tl.where(inside[None, :], s, float("-inf"))
            new_top = tl.maximum(top, tl.max(s, 1))
            scale = tl.exp(top - new_top)
            p = tl.exp(s - new_top[:, None])
            total = total * scale + tl.sum(p, 1)
            acc = acc * scale[:, None] + tl.dot(p.to(x.dtype), x)
            top = new_top
        out = (prompt * SPLIT + part) * ROWS
        tl.store(top_ptr + out + rows, top)
        tl.store(total_ptr + out + rows, total)
        tl.store(acc_ptr + (out + rows[:, None]) * C + ch[None, :], acc)

    _image_to_tokens = _tuned(_image_to_tokens_kernel, ["n_pixels", "C", "HEADS", "TPAD"])
    _tokens_to_image = _tuned(_tokens_to_image_kernel, ["n_pixels", "C", "ROWS"])


def _block() -> dict[str, int]:
    return {"BLOCK": INTERPRET_BLOCK} if INTERPRET else {}


def image_to_tokens(image: torch.Tensor, image_pe: torch.Tensor, keys: torch.Tensor,
                    bias: torch.Tensor, values: torch.Tensor, heads: int,
                    norm: torch.nn.LayerNorm) -> torch.Tensor:
    """``norm(image + softmax_per_head((image + pe) keys^T + bias) values)``, [B, P, C].

    image [1 or B, P, C] contiguous (batch 1: shared by all prompts), pe [P, C]; keys and
    values [B, heads * TPAD, C]; bias [B, heads * TPAD] (-inf on padding rows).
    """
    b, rows, c = keys.shape
    p = image.shape[1]
    out = image.new_empty(b, p, c)
    _image_to_tokens[lambda meta: (b, triton.cdiv(p, meta["BLOCK"]))](
        image, image_pe, keys, bias, values, norm.weight, norm.bias, out, p,
        0 if image.shape[0] == 1 else p * c, norm.eps,
        C=c, HEADS=heads, TPAD=rows // heads, **_block())
    return out


def tokens_to_image(queries: torch.Tensor, image: torch.Tensor,
                    image_pe: torch.Tensor) -> torch.Tensor:
    """``softmax((image + pe) . queries) image`` per prompt: queries [B, R, C] (R a power of
    two, scaled), image [B, P, C], pe [P, C]; returns [B, R, C]."""
    b, rows, c = queries.shape
    top = queries.new_empty(b, SPLITS, rows, dtype=torch.float32)
    total = torch.empty_like(top)
    acc = queries.new_empty(b, SPLITS, rows, c, dtype=torch.float32)
    _tokens_to_image[(b, SPLITS)](queries, image, image_pe, top, total, acc, image.shape[1],
                                  C=c, ROWS=rows, SPLIT=SPLITS, **_block())
    # Combine the parts' softmax sums (an empty part has top -inf and weight 0).
    weight = torch.exp(top - top.amax(1, keepdim=True)).nan_to_num_(0.0)
    pooled = (weight[..., None] * acc).sum(1) / (weight * total).sum(1)[..., None]
    return pooled.to(queries.dtype)
