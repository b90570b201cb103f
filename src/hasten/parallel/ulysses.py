"""Ulysses sequence parallelism: all-to-all heads <-> sequence around sparse attention."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from hasten.attn.layout import VideoLayout
from hasten.attn.op import sparse_attention
from hasten.attn.patterns import Pattern
from hasten.parallel.shard import ShardPlan


def _group_info(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "sequence parallelism needs torch.distributed: start the processes with torchrun "
            "and call torch.distributed.init_process_group first"
        )
    return dist.get_world_size(group), dist.get_rank(group)


def check_heads(heads: int, world_size: int) -> None:
    """Ulysses gives each rank ``heads / world_size`` whole heads; refuse what cannot split."""
    if heads % world_size:
        fits = [p for p in range(1, heads + 1) if heads % p == 0]
        raise ValueError(
            f"{heads} heads do not divide among {world_size} ranks (Ulysses moves whole heads); "
            f"use a world size in {fits}"
        )


def _all_to_all(x: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
    """Flat all-to-all with autograd: ``send[j]`` elements of ``x`` go to rank ``j``."""
    out = x.new_empty(sum(recv))
    return _quiet(dist_fn.all_to_all_single, out, x, recv, send, group=group)


def _quiet(collective, *args, **kwargs):
    # The public autograd collectives warn that they will move to the private
    # _functional_collectives module; they are the one API of torch 2.11-2.14 that is public.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return collective(*args, **kwargs)


def seq_to_heads(x: torch.Tensor, plan: ShardPlan, group=None) -> torch.Tensor:
    """``[B, H, S_rank, D]`` (all heads, my piece) -> ``[B, H/P, S, D]`` (my heads, all tokens)."""
    P, _ = _group_info(group)
    B, H, S_r, D = x.shape
    hp = H // P
    # Head group j goes to rank j: lay the groups out one after another, flat.
    send = x.reshape(B, P, hp, S_r, D).transpose(0, 1).contiguous().flatten()
    recv_sizes = [B * hp * s * D for s in plan.sizes]
    out = _all_to_all(send, [B * hp * S_r * D] * P, recv_sizes, group)
    pieces = out.split(recv_sizes)
    return torch.cat([p.view(B, hp, s, D) for p, s in zip(pieces, plan.sizes, strict=True)], dim=2)


def heads_to_seq(x: torch.Tensor, plan: ShardPlan, group=None) -> torch.Tensor:
    """The inverse of :func:`seq_to_heads`: ``[B, H/P, S, D]`` -> ``[B, H, S_rank, D]``."""
    P, rank = _group_info(group)
    B, hp, _, D = x.shape
    S_r = plan.sizes[rank]
    # Token piece j goes back to rank j.
    send = torch.cat([p.reshape(-1) for p in x.split(plan.sizes, dim=2)])
    out = _all_to_all(send, [B * hp * s * D for s in plan.sizes], [B * hp * S_r * D] * P, group)
    return out.view(P, B, hp, S_r, D).transpose(0, 1).reshape(B, P * hp, S_r, D)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: VideoLayout,
    pattern: Pattern,
    *,
    group=None,
    plan: ShardPlan | None = None,
    text_lengths: torch.Tensor | list[int] | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`hasten.attn.sparse_attention` over a sequence sharded across ranks.

    Each rank passes its piece of the tile-major sequence (``plan.shard``), all heads:
    ``[B, H, S_rank, D]``. One all-to-all gives each rank ``H / P`` heads over the whole
    sequence, attention runs there under those heads' part of ``pattern`` (per-head
    windows travel with their heads), and a second all-to-all brings the output back to
    ``[B, H, S_rank, D]``. Differentiable: the backward pass is the same two exchanges.
    ``text_lengths`` must be the same on every rank (they describe the whole batch).
    """
    P, rank = _group_info(group)
    plan = plan or ShardPlan(layout, P)
    if plan.world_size != P or plan.layout != layout:
        raise ValueError(
            f"plan is for {plan.world_size} ranks of ({plan.layout}) but the group has {P} "
            f"ranks and the layout is ({layout}); build ShardPlan(layout, world_size)"
        )
    H, S_r = q.shape[1], q.shape[2]
    if S_r != plan.sizes[rank]:
        raise ValueError(
            f"rank {rank} holds {S_r} tokens but its shard has {plan.sizes[rank]} "
            f"(plan sizes {plan.sizes}); pass plan.shard(x, rank)"
        )
    check_heads(H, P)
    if pattern.heads is not None and pattern.heads != H:
        raise ValueError(
            f"{type(pattern).__name__} has {pattern.heads} per-head entries but the input has "
            f"{H} heads"
        )
    hp = H // P
    qf, kf, vf = (seq_to_heads(t, plan, group) for t in (q, k, v))
    out = sparse_attention(
        qf,
        kf,
        vf,
        layout,
        pattern.select_heads(rank * hp, (rank + 1) * hp),
        text_lengths=text_lengths,
        scale=scale,
        backend=backend,
    )
    return heads_to_seq(out, plan, group)


def gather_sequence(x: torch.Tensor, plan: ShardPlan, group=None, dim: int = -2) -> torch.Tensor:
    """Every rank's piece put back together along ``dim`` (on every rank; differentiable)."""
    _group_info(group)
    dim = dim % x.dim()
    longest = max(plan.sizes)
    # all_gather wants one shape from every rank: pad to the longest piece, trim after.
    pad = list(x.shape)
    pad[dim] = longest - x.shape[dim]
    padded = torch.cat([x, x.new_zeros(pad)], dim=dim) if pad[dim] else x
    parts = _quiet(dist_fn.all_gather, padded.contiguous(), group=group)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, plan.sizes, strict=True)], dim)


class UlyssesAttention(nn.Module):
    """:func:`ulysses_attention` with a fixed layout, pattern and process group."""

    def __init__(
        self,
        layout: VideoLayout,
        pattern: Pattern,
        *,
        group=None,
        scale: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        pattern.validate(layout)
        P, _ = _group_info(group)
        self.plan = ShardPlan(layout, P)
        if pattern.heads is not None:
            check_heads(pattern.heads, P)
        self.layout, self.pattern, self.group = layout, pattern, group
        self.scale, self.backend = scale, backend

    def forward(self, q, k, v, text_lengths=None) -> torch.Tensor:
        return ulysses_attention(
            q,
            k,
            v,
            self.layout,
            self.pattern,
            group=self.group,
            plan=self.plan,
            text_lengths=text_lengths,
            scale=self.scale,
            backend=self.backend,
        )

    def replace(self, *, pattern: Pattern | None = None, backend: str | None = None):
        """The same exchange with another pattern or backend (what models' setters call)."""
        return UlyssesAttention(
            self.layout,
            self.pattern if pattern is None else pattern,
            group=self.group,
            scale=self.scale,
            backend=self.backend if backend is None else backend,
        )

    def extra_repr(self) -> str:
        return f"layout=({self.layout}), pattern={self.pattern!r}, ranks={self.plan.world_size}"
