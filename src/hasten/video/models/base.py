"""What the integration needs to know about one diffusers transformer class."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import nn

from hasten.video.runtime import ForwardInfo, SparseRuntime


class ModelAdapter:
    """One diffusers video transformer: where its self-attention is and what a call means.

    ``text_first`` says where the text sits in the self-attention sequence: ``False`` after
    the video (HunyuanVideo's joint attention), ``True`` before it (CogVideoX), ``None`` when
    self-attention sees video only (Wan).
    """

    name: str = ""
    class_name: str = ""
    text_first: bool | None = None

    def attention_modules(self, transformer: nn.Module) -> list[nn.Module]:
        """The self-attention modules in layer order (layer ``i`` of a strategy is entry ``i``)."""
        raise NotImplementedError

    #: Block arguments, besides the hidden states, that hold one entry per video token
    #: (rotary embeddings; Wan 2.2's per-token timestep): sequence parallelism shards them.
    sequence_args: tuple[str, ...] = ()

    def processor(self, runtime: SparseRuntime, layer: int) -> object:
        raise NotImplementedError

    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """The blocks in call order; each takes the video hidden states ``[B, S, C]`` first."""
        raise NotImplementedError

    def check_parallel(self, transformer: nn.Module) -> None:
        """Raise ``ValueError`` if this transformer's configuration cannot be sharded."""

    def forward_info(self, transformer: nn.Module, args: Mapping) -> ForwardInfo:
        """The canvas, timestep and text validity of a forward call's bound arguments."""
        raise NotImplementedError

    def bind(self, transformer: nn.Module, args: tuple, kwargs: dict) -> Mapping:
        sig = inspect.signature(transformer.forward)
        return sig.bind(*args, **kwargs).arguments


def timestep_value(timestep) -> float:
    """One number for a call's timestep (Wan 2.2 passes one per token: take the largest)."""
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().max())
    return float(timestep)


def lengths_from_mask(mask: torch.Tensor | None) -> tuple[int, ...] | None:
    """Valid text per sample from a ``[B, N]`` key mask whose valid tokens come first."""
    if mask is None:
        return None
    n = mask.shape[1]
    lengths = tuple(int(x) for x in mask.to(torch.bool).sum(dim=1).tolist())
    return None if all(x == n for x in lengths) else lengths


def qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The q, k, v projections of ``x`` (fused into one linear when the model fused them)."""
    if getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv"):
        return attn.to_qkv(x).chunk(3, dim=-1)
    return attn.to_q(x), attn.to_k(x), attn.to_v(x)


def heads_last(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, S, H*D] -> [B, S, H, D]``."""
    return x.unflatten(2, (heads, -1))
