"""Sequence-parallel a stack of transformer blocks from outside the model (Ulysses)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hasten.attn.layout import VideoLayout
from hasten.attn.op import SparseAttention
from hasten.parallel.shard import ShardPlan
from hasten.parallel.ulysses import UlyssesAttention, _group_info, check_heads, gather_sequence


@dataclass
class SequenceParallel:
    """What :func:`sequence_parallel` changed; :meth:`remove` puts the model back."""

    plan: ShardPlan
    blocks: nn.ModuleList
    originals: list[SparseAttention] = field(repr=False)
    hooks: list = field(repr=False)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for block, attn in zip(self.blocks, self.originals, strict=True):
            block.attn = attn.replace(pattern=block.attn.pattern, backend=block.attn.backend)


def sequence_parallel(
    blocks: nn.ModuleList, layout: VideoLayout, *, heads: int, group=None
) -> SequenceParallel:
    """Run ``blocks`` over pieces of one tile-major sequence, one piece per rank.

    For block stacks whose blocks take the sequence ``[B, S, D]`` (tile-major video, then or
    before it the text) as their first argument, do only per-token work besides attention,
    and hold their attention in a ``.attn`` :class:`~hasten.attn.SparseAttention` (hasten's
    reference video model). The first block's input is cut into the rank's piece, each
    ``attn`` becomes a :class:`UlyssesAttention` with the same pattern, and the last block's
    output is gathered, so the model around the stack sees the full sequence as before.
    Every rank must run the same forward on the same inputs (same seed).
    """
    world, rank = _group_info(group)
    check_heads(heads, world)
    plan = ShardPlan(layout, world)
    originals = []
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, SparseAttention) or attn.layout != layout:
            raise TypeError(
                f"block {i} has no .attn SparseAttention over ({layout}); sequence_parallel "
                f"shards stacks whose attention is hasten.attn's (for diffusers models use "
                f"hasten.video)"
            )
        originals.append(attn)
        block.attn = UlyssesAttention(
            layout, attn.pattern, group=group, scale=attn.scale, backend=attn.backend
        )

    def shard(_module, args):
        return (plan.shard(args[0], rank, dim=1), *args[1:])

    def gather(_module, _args, out: torch.Tensor) -> torch.Tensor:
        return gather_sequence(out, plan, group, dim=1)

    hooks = [
        blocks[0].register_forward_pre_hook(shard),
        blocks[-1].register_forward_hook(gather),
    ]
    return SequenceParallel(plan, blocks, originals, hooks)
