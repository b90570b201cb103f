"""CogVideoX: joint attention over [text, video] (text first, no padding) in every block."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from hasten.video.models.base import ModelAdapter, heads_last, qkv, timestep_value
from hasten.video.runtime import ForwardInfo, SparseRuntime, attend


class CogVideoXSparseProcessor:
    """CogVideoX's attention with the strategy's pattern; rotary embeddings on video only."""

    def __init__(self, runtime: SparseRuntime, layer: int) -> None:
        self.runtime, self.layer = runtime, layer

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        if attention_mask is not None:
            raise ValueError(
                "CogVideoX attention gets no attention_mask from its blocks; the sparse "
                "processor does not take one (pass attention_kwargs without it)"
            )
        n_text = encoder_hidden_states.shape[1]
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        q, k, v = (heads_last(t, attn.heads) for t in qkv(attn, x))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q = _rope_after(q, image_rotary_emb, n_text)
            if not attn.is_cross_attention:
                k = _rope_after(k, image_rotary_emb, n_text)
        out = attend(self.runtime, self.layer, q, k, v).flatten(2, 3).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        text, video = out.split([n_text, out.shape[1] - n_text], dim=1)
        return video, text


def _rope_after(x: torch.Tensor, freqs, n_text: int) -> torch.Tensor:
    return torch.cat([x[:, :n_text], apply_rotary_emb(x[:, n_text:], freqs, sequence_dim=1)], 1)


class CogVideoXAdapter(ModelAdapter):
    name = "cogvideox"
    class_name = "CogVideoXTransformer3DModel"
    text_first = True

    sequence_args = ("image_rotary_emb",)

    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        return list(transformer.transformer_blocks)

    def attention_modules(self, transformer: nn.Module) -> list[nn.Module]:
        return [block.attn1 for block in transformer.transformer_blocks]

    def processor(self, runtime: SparseRuntime, layer: int) -> object:
        return CogVideoXSparseProcessor(runtime, layer)

    def forward_info(self, transformer: nn.Module, args: Mapping) -> ForwardInfo:
        # CogVideoX takes [B, F, C, H, W] (frames before channels).
        _, frames, _, height, width = args["hidden_states"].shape
        p, pt = transformer.config.patch_size, transformer.config.patch_size_t or 1
        return ForwardInfo(
            canvas=(frames // pt, height // p, width // p),
            timestep=timestep_value(args["timestep"]),
        )
