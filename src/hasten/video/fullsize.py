"""Full-size diffusers video transformers with random weights, built in place on a device.

Benchmarks time a denoising step, and speed does not depend on the weights, so the
transformers are built on the meta device and materialized directly in bf16 on the GPU
(the 13B HunyuanVideo transformer never exists in float32 on the host). ``QUICK`` holds
tiny cases of the same classes for CPU smoke runs.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from hasten.video.presets import HUNYUAN_CANDIDATES
from hasten.video.tiny import transformer_inputs

Dims = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """A transformer at one resolution: diffusers class config, token canvas, text tokens."""

    name: str
    model: str  # hunyuanvideo | wan (the hasten.video.tiny name)
    canvas: Dims  # tokens after patchify
    text_tokens: int
    config: dict = dataclasses.field(default_factory=dict)
    tile: Dims = (6, 8, 8)
    #: Mask-search candidates on this canvas's tile grid (the published ones on 5x6x10).
    candidates: tuple[Dims, ...] = HUNYUAN_CANDIDATES[:-1]
    quick: bool = False


HUNYUAN = ModelCase("hunyuanvideo-720p-117f", "hunyuanvideo", (30, 48, 80), 256)
# Wan2.1-T2V-14B: diffusers' defaults are its config (40 layers, 40 heads, ffn 13824). Its
# 4x6x10 tile grid takes the published shapes with the 5-tile t-extent as the full 4.
WAN = ModelCase(
    "wan2.1-14b-720p-81f",
    "wan",
    (21, 45, 80),
    512,
    candidates=((1, 6, 10), (3, 3, 5), (4, 1, 10), (4, 3, 3), (4, 6, 1)),
)
# A 5x3x4 tile grid: (3,3,3) is sparse along t and w.
QUICK = {
    m: ModelCase(
        f"tiny-{m}",
        m,
        (5, 6, 8),
        8,
        tile=(1, 2, 2),
        candidates=((1, 3, 4), (3, 1, 3), (5, 3, 1)),
        quick=True,
    )
    for m in ("hunyuanvideo", "wan")
}
FULL = {"hunyuanvideo": HUNYUAN, "wan": WAN}


def build(case: ModelCase, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer with random weights, allocated directly on ``device`` in ``dtype``."""
    if case.quick:
        from hasten.video.tiny import tiny_transformer

        model = tiny_transformer(case.model).to(device)
        return (model if dtype == torch.float32 else model.to(dtype)).eval()
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    cls = HunyuanVideoTransformer3DModel if case.model == "hunyuanvideo" else WanTransformer3DModel
    with torch.device("meta"):
        model = cls(**case.config).to(dtype)
    model = model.to_empty(device=device)
    g = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights 1, biases 0
                p.fill_(1.0 if name.endswith("weight") and "norm" in name else 0.0)
            else:
                fan_in = math.prod(p.shape[1:])
                p.normal_(0.0, fan_in**-0.5, generator=g)
    if case.model == "wan":  # its RoPE tables are buffers: recompute them off the meta device
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        c = model.config
        model.rope = WanRotaryPosEmbed(c.attention_head_dim, c.patch_size, c.rope_max_seq_len)
        model.rope.to(device=device, dtype=torch.float32)  # float64 by default: needless
    return model.eval()


def inputs(case: ModelCase, model, device, dtype) -> dict:
    """The forward keyword arguments of ``model`` at ``case``'s canvas (seeded random latents)."""
    kw = dict(text_tokens=case.text_tokens, dtype=dtype, device=device, timestep=500.0)
    return transformer_inputs(case.model, model, case.canvas, **kw)
