"""The image encoder's attention as one fused ``scaled_dot_product_attention`` call.

segment_anything's encoder Attention materialises the [heads, N, N] scores, adds the decomposed
relative-position terms and softmaxes them in separate passes over that matrix (N = 4096 in the
global layers of a 1024-pixel input). Here one fused attention call does it, in one of two forms:

- ``mask``: the relative-position terms are the additive mask, [B, heads, N, N] in memory.
- ``folded``: they become extra query/key dimensions. Each key gains a one-hot of its row and of
  its column, each query the matching rel-pos terms, so ``q'.k'`` is the masked score and no mask
  exists; kernels that take no mask (flash attention) can run it, at a wider head.

Same weights, same result up to rounding. Which form is faster depends on the device and the
head size; ``saom_ros.cuda_encoder`` measures both.
"""
from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, get_rel_pos
from torch.nn import functional as F

ATTENTION_FORMS = ("mask", "folded")


class FusedAttention(Attention):
    """segment_anything's encoder Attention (same parameters) with fused attention."""

    form: str = "mask"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            # add_decomposed_rel_pos's terms, from the unscaled queries, as [B, heads, h, w, k].
            r_q = q.reshape(b, heads, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, self._table("h", h))
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, self._table("w", w))
            attend = _folded if self.form == "folded" else _masked
            out = attend(q, k, v, rel_h, rel_w, self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))

    def _table(self, axis: str, size: int) -> torch.Tensor:
        """get_rel_pos(size, size, rel_pos_<axis>), cached while the parameter is unchanged:
        get_rel_pos indexes with a host tensor, a blocking copy to the device on every call.
        Not cached when autograd records (the table must then carry gradients) nor under
        torch.compile."""
        rel_pos = getattr(self, f"rel_pos_{axis}")
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # compiled: traced once
            return get_rel_pos(size, size, rel_pos)
        # Inference tensors (a model made under torch.inference_mode) keep no version counter.
        version = None if rel_pos.is_inference() else rel_pos._version
        key = (size, rel_pos.data_ptr(), version, rel_pos.dtype)
        cache = self.__dict__.setdefault("_tables", {})
        if cache.get(axis, (None,))[0] != key:
            cache[axis] = (key, get_rel_pos(size, size, rel_pos))
        return cache[axis][1]


def _masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
            rel_w: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention with the rel-pos terms as a [B, heads, N, N] additive mask."""
    b, heads, n, _ = q.shape
    mask = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, n, n)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _folded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
            rel_w: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention with the rel-pos terms as extra query/key dimensions (no mask)."""
    b, heads, n, dim = q.shape
    h, w, kh, kw = rel_h.shape[2], rel_h.shape[3], rel_h.shape[-1], rel_w.shape[-1]
    width = -(-(dim + kh + kw) // 8) * 8  # fused kernels want head sizes in multiples of 8
    qf = q.new_zeros(b, heads, n, width)
    qf[..., :dim] = q * scale
    qf[..., dim:dim + kh] = rel_h.reshape(b, heads, n, kh)
    qf[..., dim + kh:dim + kh + kw] = rel_w.reshape(b, heads, n, kw)
    kf = k.new_zeros(b, heads, n, width)
    kf[..., :dim] = k
    # Key j = (row, col) of an h x w grid: one-hots of its row and of its column.
    kf[..., dim:dim + kh] = torch.eye(kh, dtype=k.dtype, device=k.device).repeat_interleave(w, 0)
    kf[..., dim + kh:dim + kh + kw] = torch.eye(kw, dtype=k.dtype, device=k.device).repeat(h, 1)
    vf = F.pad(v, (0, width - dim))  # flash attention wants one head size for q, k and v
    return F.scaled_dot_product_attention(qf, kf, vf, scale=1.0)[..., :dim]


def fuse_attention(encoder: ImageEncoderViT, form: str = "mask") -> ImageEncoderViT:
    """Switch every block of ``encoder`` to FusedAttention in the given form, in place
    (parameters unchanged)."""
    if form not in ATTENTION_FORMS:
        raise ValueError(f"attention form must be one of {ATTENTION_FORMS}, not {form!r}")
    for block in encoder.blocks:
        block.attn.__class__ = FusedAttention
        block.attn.form = form
    return encoder
