"""Wan2.1: video-only self-attention (attn1) in every block; text enters by cross-attention."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hasten.video.models.base import ModelAdapter, heads_last, qkv, timestep_value
from hasten.video.runtime import ForwardInfo, SparseRuntime, attend


class WanSparseProcessor:
    """Wan's self-attention with the strategy's pattern (cross-attention stays as it is)."""

    def __init__(self, runtime: SparseRuntime, layer: int) -> None:
        self.runtime, self.layer = runtime, layer

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                "the sparse Wan processor is for self-attention (attn1), which gets no "
                "encoder_hidden_states or attention_mask; leave attn2 on its own processor"
            )
        q, k, v = qkv(attn, hidden_states)
        # Wan normalizes q and k across all heads, before splitting them.
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (heads_last(t, attn.heads) for t in (q, k, v))
        if rotary_emb is not None:
            q, k = (_rope_interleaved(t, *rotary_emb) for t in (q, k))
        out = attend(self.runtime, self.layer, q, k, v).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Pairs (x[2i], x[2i+1]) rotate by the angle whose cos/sin sit at 2i and 2i+1.
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    rotated = torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)
    return rotated.type_as(x)


class WanAdapter(ModelAdapter):
    name = "wan"
    class_name = "WanTransformer3DModel"
    text_first = None

    # temb is per token only in Wan 2.2 ([B, S, 6, C]); sharding leaves Wan 2.1's [B, 6, C].
    sequence_args = ("temb", "rotary_emb")

    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        return list(transformer.blocks)

    def attention_modules(self, transformer: nn.Module) -> list[nn.Module]:
        return [block.attn1 for block in transformer.blocks]

    def processor(self, runtime: SparseRuntime, layer: int) -> object:
        return WanSparseProcessor(runtime, layer)

    def forward_info(self, transformer: nn.Module, args: Mapping) -> ForwardInfo:
        _, _, frames, height, width = args["hidden_states"].shape
        pt, ph, pw = transformer.config.patch_size
        return ForwardInfo(
            canvas=(frames // pt, height // ph, width // pw),
            timestep=timestep_value(args["timestep"]),
        )
