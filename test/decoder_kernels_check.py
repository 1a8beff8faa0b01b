"""Run under TRITON_INTERPRET=1: the decoder through the fused kernels vs segment_anything's.

Prints one JSON line: which kernels ran and the largest differences from the reference, for an
image side shared by all prompts and one per prompt. (Triton reads the variable at import, so
the test runs this in its own process.)
"""
import json

import torch

from saom_ros import decoder_kernels as kernels
from saom_ros.model import ModelConfig, build_saom


def main() -> None:
    calls = []
    for name in ("image_to_tokens", "tokens_to_image"):
        fn = getattr(kernels, name)
        setattr(kernels, name, lambda *a, _fn=fn, _n=name: (calls.append(_n), _fn(*a))[1])
    torch.manual_seed(1)
    model = build_saom(ModelConfig.preset("tiny")).eval()
    sam, grid = model.sam, model.config.img_size // model.config.patch_size
    result = {"interpret": kernels.INTERPRET}
    for case, n_images in (("shared", 1), ("per_prompt", 5)):
        calls.clear()
        with torch.no_grad():
            emb = torch.randn(n_images, model.config.prompt_embed_dim, grid, grid)
            pts = torch.rand(5, 1, 2) * model.config.img_size
            labels = torch.ones(5, 1, dtype=torch.int)
            sparse, dense = sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
            ref = [sam.mask_decoder(emb[i % n_images][None], sam.prompt_encoder.get_dense_pe(),
                                    sparse[i:i + 1], dense[i:i + 1], multimask_output=True)
                   for i in range(5)]
            masks, iou = (torch.cat(r) for r in zip(*ref))
            out = model.decode(emb, pts, labels)
        result[case] = {"calls": list(calls),
                        "mask_diff": float((out.low_res_logits - masks).abs().max()),
                        "iou_diff": float((out.iou_pred - iou).abs().max())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
