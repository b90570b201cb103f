"""HunyuanVideo: joint attention over [video, text] in 20 double- and 40 single-stream blocks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from hasten.video.models.base import (
    ModelAdapter,
    heads_last,
    lengths_from_mask,
    qkv,
    timestep_value,
)
from hasten.video.runtime import ForwardInfo, SparseRuntime, attend


class HunyuanVideoSparseProcessor:
    """HunyuanVideo's attention with the strategy's pattern; text keeps dense attention.

    Double-stream blocks project video and text apart (``add_*_proj``), single-stream blocks
    project the concatenation; rotary embeddings apply to the video tokens only.
    """

    def __init__(self, runtime: SparseRuntime, layer: int) -> None:
        self.runtime, self.layer = runtime, layer

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        # The padding in attention_mask reached the runtime from encoder_attention_mask.
        n_video = hidden_states.shape[1]
        separate = attn.add_q_proj is not None
        x = hidden_states
        if not separate and encoder_hidden_states is not None:
            x = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        q, k, v = (heads_last(t, attn.heads) for t in qkv(attn, x))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q, k = (_rope_video(t, image_rotary_emb, n_video) for t in (q, k))
        if separate and encoder_hidden_states is not None:
            added = _added_qkv(attn, encoder_hidden_states)
            tq, tk, tv = (heads_last(t, attn.heads) for t in added)
            if attn.norm_added_q is not None:
                tq = attn.norm_added_q(tq)
            if attn.norm_added_k is not None:
                tk = attn.norm_added_k(tk)
            q, k, v = (torch.cat(p, dim=1) for p in ((q, tq), (k, tk), (v, tv)))

        out = attend(self.runtime, self.layer, q, k, v).flatten(2, 3).to(q.dtype)

        if encoder_hidden_states is None:
            return out, None
        video, text = out[:, :n_video], out[:, n_video:]
        if getattr(attn, "to_out", None) is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return video, text


def _rope_video(x: torch.Tensor, freqs, n_video: int) -> torch.Tensor:
    if x.shape[1] == n_video:
        return apply_rotary_emb(x, freqs, sequence_dim=1)
    return torch.cat([apply_rotary_emb(x[:, :n_video], freqs, sequence_dim=1), x[:, n_video:]], 1)


def _added_qkv(attn: nn.Module, x: torch.Tensor):
    if getattr(attn, "fused_projections", False) and hasattr(attn, "to_added_qkv"):
        return attn.to_added_qkv(x).chunk(3, dim=-1)
    return attn.add_q_proj(x), attn.add_k_proj(x), attn.add_v_proj(x)


class HunyuanVideoAdapter(ModelAdapter):
    name = "hunyuanvideo"
    class_name = "HunyuanVideoTransformer3DModel"
    text_first = False

    # The rotary embeddings: "freqs_cis" in double-stream blocks, "image_rotary_emb" in single.
    sequence_args = ("freqs_cis", "image_rotary_emb")

    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        # Double-stream blocks first, then single-stream: layers 0..19 and 20..59 at full size.
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def attention_modules(self, transformer: nn.Module) -> list[nn.Module]:
        return [b.attn for b in self.blocks(transformer)]

    def check_parallel(self, transformer: nn.Module) -> None:
        kind = getattr(transformer.config, "image_condition_type", None)
        if kind == "token_replace":
            # Those blocks modulate the first latent frame apart, by its raster position.
            raise ValueError(
                "HunyuanVideo with image_condition_type='token_replace' (the I2V variant) "
                "cannot be sequence-parallel: its blocks treat the first frame's tokens by "
                "raster position; run it in one process, or use the text-to-video model"
            )

    def processor(self, runtime: SparseRuntime, layer: int) -> object:
        return HunyuanVideoSparseProcessor(runtime, layer)

    def forward_info(self, transformer: nn.Module, args: Mapping) -> ForwardInfo:
        _, _, frames, height, width = args["hidden_states"].shape
        p, pt = transformer.config.patch_size, transformer.config.patch_size_t
        return ForwardInfo(
            canvas=(frames // pt, height // p, width // p),
            timestep=timestep_value(args["timestep"]),
            text_lengths=lengths_from_mask(args.get("encoder_attention_mask")),
        )
