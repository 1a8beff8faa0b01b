"""The image encoder's attention as one fused ``scaled_dot_product_attention`` call.

segment_anything's encoder Attention materialises the [heads, N, N] scores, adds the decomposed
relative-position terms and softmaxes them in separate passes over that matrix (N = 4096 in the
global layers of a 1024-pixel input). Here the relative-position terms are the additive mask of
one fused attention call: same weights, same result up to rounding.
"""
from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, get_rel_pos
from torch.nn import functional as F


class FusedAttention(Attention):
    """segment_anything's encoder Attention (same parameters) with fused attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None
        if self.use_rel_pos:
            # add_decomposed_rel_pos's terms, from the unscaled queries, as [B, heads, N, N].
            r_q = q.reshape(b * heads, h, w, -1)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, self.rel_pos_h))
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, self.rel_pos_w))
            mask = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def fuse_attention(encoder: ImageEncoderViT) -> ImageEncoderViT:
    """Switch every block of ``encoder`` to FusedAttention in place (parameters unchanged)."""
    for block in encoder.blocks:
        block.attn.__class__ = FusedAttention
    return encoder
