"""segment_anything's mask decoder (same modules and weights) arranged for many prompts per image.

Everything mode sends ~1000 single-point prompts through the decoder for one image. The image
side of the two-way transformer is then a [B, P, C] tensor (P embedding pixels per prompt)
while the token side has only T = 7 rows per prompt. These rearrangements make that cheap:

- Attention between the P image rows and the T tokens is folded: the projection on the image
  side is moved onto the token side (``(W x) . k == x . (W^T k)``), so no per-prompt [B, P, C]
  tensor is ever projected or split into heads; every product is one batched GEMM over
  channels-last data.
- While the image side is still the same for every prompt (first block), its projections are
  computed once and all prompts' token queries attend to it as one long sequence. Afterwards
  each per-prompt image side is added to the positional encoding once (``ImageSide``), for both
  attentions that score against it, and the output projection's bias rides on the folded values.
- The last token-to-image attention runs for the output tokens only (IoU and mask tokens): the
  prompt tokens' results are never read.
- On CUDA without gradients, each attention over the per-prompt image side is one fused Triton
  kernel (``decoder_kernels``), layer norm included.
- The upscaling convolutions (ConvTranspose2d with kernel 2, stride 2) are per-pixel GEMMs on
  the channels-last image side; pixel order is restored once, on the small mask logits.

The token stage (``run_tokens``) and the mask stage (``upscale_masks``) are separate so that a
caller can drop prompts on their predicted IoU before paying for masks.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Sequence

import torch
from segment_anything.modeling import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayTransformer
from torch.nn import functional as F

from saom_ros import decoder_kernels as kernels

# Upscaling steps of the decoder (two stride-2 transposed convolutions).
UPSCALE = 4
# Upscaled features per block of prompts in the CPU mask stage: the L2 caches of two cores
# (SAOM-small, 64 prompts at once: 6.7 ms; in blocks of 16 (2 MiB): 3.9 ms).
CPU_MASK_BLOCK_BYTES = 2 << 20


class DecoderTokens(NamedTuple):
    """The two-way transformer's outputs for B prompts, before any mask is made."""

    tokens: torch.Tensor  # [B, 1 + num_mask_tokens, C]: the IoU token, then the mask tokens
    image: torch.Tensor  # [B, h*w, C] the image side, channels last
    grid: tuple[int, int]  # (h, w) of the image side
    iou_pred: torch.Tensor  # [B, num_mask_tokens]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention of projected [B, N, C] tensors with the fused kernel."""
    def split(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)


def _attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment_anything's Attention.forward (same weights) with fused attention.

    Keys and values shared by all prompts (batch 1) are projected once, and every prompt's
    queries attend to them as one long query sequence instead of B broadcast copies.
    """
    b = max(q.shape[0], k.shape[0], v.shape[0])
    q, k, v = attn.q_proj(q), attn.k_proj(k), attn.v_proj(v)
    if b > 1 and k.shape[0] == 1 and v.shape[0] == 1:
        n = q.shape[1]
        out = _sdpa(q.reshape(1, b * n, -1), k, v, attn.num_heads).reshape(b, n, -1)
    else:
        out = _sdpa(*(x.expand(b, -1, -1) for x in (q, k, v)), attn.num_heads)
    return attn.out_proj(out)


def _head_weights(linear: torch.nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight as [heads, head_dim, C_in] and its bias as [heads, head_dim]."""
    w = linear.weight
    return w.view(heads, w.shape[0] // heads, w.shape[1]), linear.bias.view(heads, -1)


def _add_bmm(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``base + a @ b`` (batched); in place on a per-prompt ``base`` when no gradient is
    recorded, which saves a pass over the largest tensor."""
    if torch.is_grad_enabled() or base.shape[0] != a.shape[0]:
        return torch.baddbmm(base, a, b)
    return base.baddbmm_(a, b)


class ImageSide:
    """The image side [1 or B, P, C] (channels last) with the positional encoding [1, P, C].

    Attention scores against it use ``keys``, the sum of both, made once and only when asked
    for: the fused CUDA kernels read the two separately, and two attentions share one sum.
    """

    def __init__(self, x: torch.Tensor, pe: torch.Tensor) -> None:
        self.x, self.pe = x, pe

    @functools.cached_property
    def keys(self) -> torch.Tensor:
        return self.x + self.pe


def _scores(q: torch.Tensor, side: ImageSide, bias: Optional[torch.Tensor] = None
            ) -> torch.Tensor:
    """``q . (image + pe) (+ bias)`` as [B, R, P] for rows q [B, R, C] (bias [B, R, 1])."""
    keys = side.keys.transpose(1, 2)
    if side.x.shape[0] == 1:  # the same image side for every prompt: one GEMM
        rows = q.flatten(0, 1)
        out = torch.mm(rows, keys[0]) if bias is None else \
            torch.addmm(bias.flatten(0, 1), rows, keys[0])
        return out.view(q.shape[0], q.shape[1], -1)
    return torch.bmm(q, keys) if bias is None else torch.baddbmm(bias, q, keys)


def _t2i_queries(attn: Attention, q: torch.Tensor) -> torch.Tensor:
    """Token queries [B, T, C] folded onto the image side: head h's row t is ``Wk_h^T q_h``
    (scaled), so that its score with pixel p is a dot product with the pixel itself: [B, H, T, C].
    The key bias adds the same value to all pixels of a row and cancels in the softmax."""
    b, t, _ = q.shape
    wk, _ = _head_weights(attn.k_proj, attn.num_heads)
    qh = attn.q_proj(q).view(b, t, attn.num_heads, -1) * (1.0 / math.sqrt(wk.shape[1]))
    return torch.einsum("bthi,hic->bhtc", qh, wk)


def _t2i_output(attn: Attention, pooled: torch.Tensor) -> torch.Tensor:
    """The attention's output [B, T, C] from the pooled pixels [B, H, T, C] of each head's
    weights: ``Wv_h (sum_p a_p x_p) + bv_h`` because the weights sum to one."""
    b, _, t, _ = pooled.shape
    wv, bv = _head_weights(attn.v_proj, attn.num_heads)
    return attn.out_proj((torch.einsum("bhtc,hic->bthi", pooled, wv) + bv).reshape(b, t, -1))


def _tokens_to_image(attn: Attention, q: torch.Tensor, side: ImageSide) -> torch.Tensor:
    """Attention of token queries [B, T, C] to a per-prompt image side (keys image + pe,
    values image), folded."""
    b, t, _ = q.shape
    q_img = _t2i_queries(attn, q)
    if kernels.available(side.x, q_img.shape[-1], attn.num_heads):
        tpad = kernels.padded_tokens(t)
        pooled = kernels.tokens_to_image(_pad_tokens(q_img, tpad, 0.0).flatten(1, 2),
                                         side.x.contiguous(), side.pe[0].contiguous())
        return _t2i_output(attn, pooled.view(b, attn.num_heads, tpad, -1)[:, :, :t])
    q_img = q_img.reshape(b, -1, q_img.shape[-1])
    pooled = torch.bmm(_scores(q_img, side).softmax(-1), side.x)
    return _t2i_output(attn, pooled.view(b, attn.num_heads, t, -1))


def _pad_tokens(x: torch.Tensor, tpad: int, fill: float) -> torch.Tensor:
    """[B, H, T, ...] -> [B, H, tpad, ...], the new rows set to ``fill``."""
    out = x.new_full((x.shape[0], x.shape[1], tpad) + x.shape[3:], fill)
    out[:, :, :x.shape[2]] = x
    return out


def _i2t_operands(attn: Attention, k: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image-to-token attention folded onto the image side, for token keys and values
    [B, T, C]: keys ``Wq_h^T k_h`` and biases ``bq_h . k_h`` (scaled) so that a pixel's score is
    ``(x_p + pe_p) . key + bias``; values with the output projection applied, plus its bias
    divided by the number of heads: each head's weights sum to one over the tokens, so every
    pixel receives the bias exactly once. Shapes [B, H, T, C], [B, H, T], [B, H, T, C]."""
    b, t, _ = k.shape
    heads = attn.num_heads
    wq, bq = _head_weights(attn.q_proj, heads)
    wo = attn.out_proj.weight.view(-1, heads, wq.shape[1])  # [C, H, d]
    kh = attn.k_proj(k).view(b, t, heads, -1) * (1.0 / math.sqrt(wq.shape[1]))
    vh = attn.v_proj(v).view(b, t, heads, -1)
    return (torch.einsum("bthi,hic->bhtc", kh, wq), torch.einsum("bthi,hi->bht", kh, bq),
            torch.einsum("bthi,chi->bhtc", vh, wo) + attn.out_proj.bias / heads)


def _image_to_tokens(attn: Attention, norm: torch.nn.LayerNorm, side: ImageSide,
                     k: torch.Tensor, v: torch.Tensor) -> ImageSide:
    """The image side ``norm(image + Attention(image + pe, k, v))`` for token keys and values
    [B, T, C], folded (``_i2t_operands``)."""
    b, t, _ = k.shape
    heads = attn.num_heads
    keys, bias, values = _i2t_operands(attn, k, v)
    c = keys.shape[-1]
    if kernels.available(side.x, c, heads):
        tpad = kernels.padded_tokens(t)
        return ImageSide(kernels.image_to_tokens(
            side.x.contiguous(), side.pe[0].contiguous(),
            _pad_tokens(keys, tpad, 0.0).flatten(1, 2),
            _pad_tokens(bias, tpad, float("-inf")).flatten(1, 2),
            _pad_tokens(values, tpad, 0.0).flatten(1, 2), heads, norm), side.pe)
    keys, bias, values = keys.reshape(b, heads * t, c), bias.reshape(b, heads * t, 1), \
        values.reshape(b, heads * t, c)
    # Scores as [B, H*T, P]: the softmax over T then runs along a non-contiguous dimension,
    # vectorised over pixels (~6x faster than a softmax over a last dimension of 7).
    scores = _scores(keys, side, bias)
    a = scores.view(b, heads, t, -1).softmax(2).view(b, heads * t, -1)
    return ImageSide(norm(_add_bmm(side.x, a.transpose(1, 2), values)), side.pe)


def _token_attention(attn: Attention, q: torch.Tensor, side: ImageSide) -> torch.Tensor:
    """Token queries attending to keys ``image + pe`` and values ``image``: the long-sequence
    form while the image side is shared (batch 1), else the folded one."""
    if side.x.shape[0] == 1:
        return _attend(attn, q, side.keys, side.x)
    return _tokens_to_image(attn, q, side)


def _two_way(transformer: TwoWayTransformer, image: torch.Tensor, image_pe: torch.Tensor,
             tokens: torch.Tensor, outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TwoWayTransformer.forward on channels-last image [1 or B, P, C] and pe [1, P, C], for
    the first ``outputs`` tokens (the last attention skips the others).

    An image side of batch 1 stays one copy until the first image-to-token attention makes it
    per prompt; before that, token-to-image attention uses the long-sequence form."""
    keys, queries = ImageSide(image, image_pe), tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _attend(layer.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + _attend(layer.self_attn, q, q, queries)
        queries = layer.norm1(queries)
        queries = layer.norm2(queries + _token_attention(layer.cross_attn_token_to_image,
                                                         queries + tokens, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = _image_to_tokens(layer.cross_attn_image_to_token, layer.norm4, keys,
                                queries + tokens, queries)
    queries, tokens = queries[:, :outputs], tokens[:, :outputs]
    queries = transformer.norm_final_attn(queries + _token_attention(
        transformer.final_attn_token_to_image, queries + tokens, keys))
    return queries, keys.x


def run_tokens(decoder: MaskDecoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
               sparse: torch.Tensor, dense: torch.Tensor) -> DecoderTokens:
    """The transformer and IoU head of MaskDecoder.predict_masks for B prompts.

    ``image_embeddings`` is one embedding for all prompts ([1, C, h, w]) or one per prompt;
    ``dense`` a broadcast no-mask embedding (batch stride 0) or one per prompt."""
    b = sparse.shape[0]
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((out_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
    if image_embeddings.shape[0] == 1 and dense.stride(0) == 0:
        src = image_embeddings + dense[:1]  # one image, no mask prompts: shared by all prompts
    else:
        src = image_embeddings.expand(b, -1, -1, -1) + dense
    h, w = src.shape[-2:]
    hs, image = _two_way(decoder.transformer, src.flatten(2).transpose(1, 2),
                         image_pe.flatten(2).transpose(1, 2), tokens, len(out_tokens))
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])
    return DecoderTokens(hs, image, (h, w), iou_pred)


def upscale_masks(decoder: MaskDecoder, state: DecoderTokens, mask_indices: Sequence[int],
                  extent: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Low-res mask logits [B, len(mask_indices), 4h', 4w'] of the chosen mask tokens.

    Same as the decoder's output_upscaling + hypernetwork product; ``extent`` (rows, columns of
    the image side) limits the masks to that top-left part, which is exact because both
    upscaling steps are per pixel. On the CPU the prompts go through in blocks whose upscaled
    features fit in the cores' L2 caches (``CPU_MASK_BLOCK_BYTES``): the four passes over them
    then stay in cache.
    """
    b = state.image.shape[0]
    h, w = state.grid
    eh, ew = extent if extent is not None else (h, w)
    image = state.image.view(b, h, w, state.image.shape[-1])[:, :eh, :ew]
    mask_tokens = state.tokens[:, 1:1 + decoder.num_mask_tokens]
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](mask_tokens[:, i])
                         for i in mask_indices], dim=1)  # [B, M, c2]
    blocks = 1
    if image.device.type == "cpu":
        upscaled = eh * ew * UPSCALE ** 2 * decoder.output_upscaling[3].out_channels * 4
        # Whole blocks only: a remainder block of a few prompts costs more than it saves.
        blocks = max(1, b // max(1, CPU_MASK_BLOCK_BYTES // upscaled))
    masks = torch.cat([_upscale(decoder, x, y) for x, y in
                       zip(image.tensor_split(blocks), hyper.tensor_split(blocks))]) \
        if blocks > 1 else _upscale(decoder, image, hyper)
    masks = masks.index_select(1, _pixel_order(eh, ew, masks.device))
    return masks.view(b, len(mask_indices), UPSCALE * eh, UPSCALE * ew)


def _upscale(decoder: MaskDecoder, image: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
    """Mask logits [B * M, pixels in (y, x, dy, dx, dy2, dx2) order] of an image side
    [B, eh, ew, C] (channels last) and hypernetwork outputs [B, M, c2]."""
    conv1, norm, act1, conv2, act2 = decoder.output_upscaling
    b, eh, ew, c = image.shape
    x = image.reshape(b * eh * ew, c)
    c1, c2 = conv1.out_channels, conv2.out_channels
    # ConvTranspose2d(k=2, s=2) weight [in, out, 2, 2] -> [in, (dy, dx, out)]: one GEMM per pixel.
    x = torch.addmm(conv1.bias.repeat(4), x, conv1.weight.permute(0, 2, 3, 1).reshape(-1, 4 * c1))
    x = act1(F.layer_norm(x.view(-1, c1), (c1,), norm.weight, norm.bias, norm.eps))
    x = torch.addmm(conv2.bias.repeat(4), x, conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2))
    x = act2(x).view(b, eh * ew * UPSCALE ** 2, c2)
    return torch.bmm(hyper, x.transpose(1, 2)).flatten(0, 1)


def _pixel_order(eh: int, ew: int, device: torch.device) -> torch.Tensor:
    """Indices that take upscaled pixels from (y, x, dy, dx, dy2, dx2) order to rows
    (y, dy, dy2) and columns (x, dx, dx2): one gather, ~20x faster on the CPU than the same
    reordering as a 7-dimensional permute."""
    order = torch.arange(eh * ew * UPSCALE ** 2, device=device).view(eh, ew, 2, 2, 2, 2)
    return order.permute(0, 2, 4, 1, 3, 5).reshape(-1)
