"""Ulysses sequence parallelism for the diffusers video transformers of ``hasten.video``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.distributed.nn.functional as dist_fn
from torch import nn

from hasten.attn.layout import VideoLayout
from hasten.parallel.shard import ShardPlan
from hasten.parallel.ulysses import (
    _group_info,
    _quiet,
    check_heads,
    gather_sequence,
    heads_to_seq,
    seq_to_heads,
)
from hasten.video.attention import _order, heads_first_attention
from hasten.video.integrate import (
    _unwrap,
    disable_sparse_attention,
    enable_sparse_attention,
    sparse_runtime,
)
from hasten.video.models import adapter_for
from hasten.video.runtime import SparseRuntime
from hasten.video.strategy import DenseStrategy


class VideoExchange:
    """One rank's side of the transformer: its piece of the video and the all-to-alls.

    Video tokens are put in tile-major order once, before the first block, and cut between
    whole tiles (:class:`ShardPlan`); every block then runs on the rank's piece. The text is
    small and stays whole on every rank: in attention each rank uses its own heads' share of
    it, and the text's output heads are gathered back from all ranks.
    """

    def __init__(self, group, text_first: bool | None) -> None:
        self.group = group
        self.world, self.rank = _group_info(group)
        self.text_first = bool(text_first)
        self.plan: ShardPlan | None = None
        #: Block inputs already sharded in this forward, by the id of the full tensor.
        self._sharded: dict[int, torch.Tensor] = {}

    # ---- per forward ---------------------------------------------------------------------
    def begin(self, video: VideoLayout) -> None:
        if self.plan is None or self.plan.layout != video:
            self.plan = ShardPlan(video, self.world)
        self._sharded.clear()

    @property
    def video_tokens(self) -> int:
        return self.plan.layout.video_tokens

    def _reorder(self, x: torch.Tensor, dim: int, *, inverse: bool) -> torch.Tensor:
        # Raster <-> tile-major; 1x1x1 tiles (dense strategies) are raster order already.
        if self.plan.layout.tile == (1, 1, 1):
            return x
        return x.index_select(dim, _order(self.plan.layout, str(x.device), inverse=inverse))

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's piece of a raster-order per-video-token tensor ``x`` along ``dim``."""
        return self.plan.shard(self._reorder(x, dim, inverse=False), self.rank, dim=dim)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's piece of ``[B, S_rank, C]`` hidden states, back in raster order."""
        full = gather_sequence(x, self.plan, self.group, dim=1)
        return self._reorder(full, 1, inverse=True)

    def shard_arg(self, value):
        """A block argument with one entry per video token, sharded (cached per forward)."""
        if isinstance(value, tuple | list):
            return type(value)(self.shard_arg(v) for v in value)
        if not isinstance(value, torch.Tensor):
            return value
        dims = [d for d in range(value.dim()) if value.shape[d] == self.video_tokens]
        if not dims:  # not per token (Wan 2.1's temb)
            return value
        key = id(value)
        if key not in self._sharded:
            self._sharded[key] = self.shard(value, dims[0])
        return self._sharded[key]

    # ---- attention -----------------------------------------------------------------------
    def attend(self, runtime: SparseRuntime, layer: int, q, k, v) -> torch.Tensor:
        """Attention of this rank's ``[B, S_rank (+ text), H, D]`` q, k, v; same shape out."""
        if runtime.recorder is not None:
            raise RuntimeError(
                "calibration records whole-sequence attention: run hasten calibrate in one "
                "process, then use its strategy under sequence parallelism"
            )
        plan, rank, P = self.plan, self.rank, self.world
        mine = plan.sizes[rank]
        text = q.shape[1] - mine
        layout = runtime.layout(self.video_tokens + text)
        pattern, lengths = runtime.rule(layer, layout, q.shape[0])
        hp = q.shape[2] // P
        lo = rank * hp

        def full(x):
            # [B, S_rank, H, D] video piece + whole text -> my heads over the whole sequence,
            # heads first and contiguous (the layout the kernels load k and v through TMA).
            vid, txt = self._split(x, mine)
            vid = seq_to_heads(vid.transpose(1, 2), plan, self.group)
            return self._join(vid, txt[:, :, lo : lo + hp].transpose(1, 2), dim=2)

        out = heads_first_attention(
            full(q),
            full(k),
            full(v),
            layout,
            pattern.select_heads(lo, lo + hp),
            lengths,
            backend=runtime.backend,
        )
        vid, txt = self._split(out, self.video_tokens, dim=2)
        vid = heads_to_seq(vid, plan, self.group).transpose(1, 2)
        txt = txt.transpose(1, 2)
        if not text:
            return vid
        # Every rank computed the text for its own heads: put the heads back together.
        parts = _quiet(dist_fn.all_gather, txt.contiguous(), group=self.group)
        return self._join(vid, torch.cat(parts, dim=2))

    def _split(self, x: torch.Tensor, video: int, dim: int = 1) -> tuple[torch.Tensor, ...]:
        """``(video, text)`` of a sequence (along ``dim``) that holds ``video`` video tokens."""
        text = x.shape[dim] - video
        if self.text_first:
            txt, vid = x.split([text, video], dim=dim)
            return vid, txt
        return tuple(x.split([video, text], dim=dim))

    def _join(self, vid: torch.Tensor, txt: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return torch.cat([txt, vid] if self.text_first else [vid, txt], dim=dim)


@dataclass
class TransformerParallel:
    """What :func:`sequence_parallel_transformer` changed; :meth:`remove` puts it back."""

    model: nn.Module
    exchange: VideoExchange
    runtime: SparseRuntime
    owns_runtime: bool
    hooks: list = field(repr=False)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.runtime.exchange = None
        if self.owns_runtime:
            disable_sparse_attention(self.model)


def sequence_parallel_transformer(transformer: nn.Module, *, group=None) -> TransformerParallel:
    """Shard a diffusers video transformer's sequence over the ranks of ``group`` (Ulysses).

    ``transformer`` is one that :func:`hasten.video.enable_sparse_attention` supports; its
    sparse strategy (enable it first) applies unchanged, and without one attention is dense.
    Every rank runs the same forward on the same inputs; each computes its piece of the
    video through every block and the whole (small) text, and every rank gets the full
    output. The heads must divide among the ranks.
    """
    model = _unwrap(transformer)
    adapter = adapter_for(model)
    adapter.check_parallel(model)
    world, _ = _group_info(group)
    runtime = sparse_runtime(model)
    owns = runtime is None
    if owns:
        runtime = enable_sparse_attention(model, DenseStrategy())
    if runtime.exchange is not None:
        raise RuntimeError(f"{type(model).__name__} is sequence-parallel already")
    try:
        check_heads(runtime.heads, world)
    except ValueError:
        if owns:
            disable_sparse_attention(model)
        raise
    exchange = VideoExchange(group, adapter.text_first)
    runtime.exchange = exchange

    def begin(_module, _args, _kwargs):
        canvas = runtime.info.canvas
        if isinstance(runtime.strategy, DenseStrategy):
            # Dense attention ignores the token order: cut the raster order token by token,
            # as evenly as it goes, and skip the permutation.
            exchange.begin(VideoLayout(canvas, (1, 1, 1)))
        else:
            exchange.begin(runtime.strategy.layout(canvas))

    blocks = adapter.blocks(model)
    hooks = [model.register_forward_pre_hook(begin, with_kwargs=True)]
    for i, block in enumerate(blocks):
        hooks.append(
            block.register_forward_pre_hook(
                _block_inputs(block, exchange, adapter.sequence_args, first=i == 0),
                with_kwargs=True,
            )
        )
    hooks.append(blocks[-1].register_forward_hook(_block_output(exchange)))
    return TransformerParallel(model, exchange, runtime, owns, hooks)


def _block_inputs(block: nn.Module, exchange: VideoExchange, names, *, first: bool):
    sig = inspect.signature(block.forward)

    def hook(_module, args, kwargs):
        bound = sig.bind(*args, **kwargs)
        values = bound.arguments
        hidden = next(iter(values))
        if first:
            x = values[hidden]
            if x.shape[1] != exchange.video_tokens:
                raise ValueError(
                    f"the first block got {x.shape[1]} tokens but canvas "
                    f"{exchange.plan.layout.canvas} has {exchange.video_tokens}"
                )
            values[hidden] = exchange.shard(x, dim=1)
        for name in names:
            if values.get(name) is not None:
                values[name] = exchange.shard_arg(values[name])
        return bound.args, bound.kwargs

    return hook


def _block_output(exchange: VideoExchange):
    def hook(_module, _args, out):
        if isinstance(out, tuple):
            return (exchange.gather(out[0]), *out[1:])
        return exchange.gather(out)

    return hook
