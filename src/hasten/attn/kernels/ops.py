"""Launchers, chunk tables and the ``torch.library`` ops around the block-sparse Triton kernels."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from triton.runtime.errors import OutOfResources

from hasten.attn.block_table import (
    FULL,
    PARTIAL,
    SKIP,
    BlockTable,
    block_table,
    cells,
    index_lists,
)
from hasten.attn.kernels import block_sparse as K
from hasten.attn.layout import VideoLayout

#: The last compiled kernel of each pass, for resource reports (registers, spills, shared).
LAUNCHED: dict[str, object] = {}

#: Stage counts lowered because the asked-for count did not fit in shared memory, per kernel,
#: meta, head dim and dtype: a config tuned on one pattern can overflow on another (the cell
#: lookup of FrameTiles needs about 1 KB more than the H100 config leaves).
LOWERED_STAGES: dict[tuple, int] = {}


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class PassConfig:
    """Chunk sizes (at most ``block_m`` queries, ``block_n`` keys), warps and pipeline stages
    of one kernel; each kernel gets chunk tables for its own chunk sizes."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {v}")


@dataclass(frozen=True)
class KernelConfig:
    """How the kernels run (not what they compute): one :class:`PassConfig` per kernel, and
    whether the forward loads k, v through tensor descriptors (TMA, Hopper and newer) and
    whether its unmasked loop is warp-specialized (Triton's producer/consumer split)."""

    fwd: PassConfig = PassConfig(128, 64, 8, 3)
    dkdv: PassConfig = PassConfig(64, 64, 4, 2)
    dq: PassConfig = PassConfig(64, 64, 4, 2)
    tma: bool = False
    warp_specialize: bool = False


@dataclass(frozen=True)
class ChunkLists:
    """One kernel's view of a table: per row, the chunks that run unmasked and the masked ones."""

    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    has_masked: bool
    cell_mask: bool
    pad_mask: bool


@dataclass(frozen=True)
class KernelTables:
    """Everything the kernels read besides q, k, v, as int32/int8 tensors on one device."""

    q_bounds: torch.Tensor
    kv_bounds: torch.Tensor
    rows: ChunkLists  # per query chunk, its kv chunks (forward, dq)
    cols: ChunkLists  # per kv chunk, its query chunks (dk, dv)
    cell: torch.Tensor
    keep: torch.Tensor
    pad: torch.Tensor

    def tensors(self, lists: ChunkLists) -> list[torch.Tensor]:
        return [self.q_bounds, self.kv_bounds, *lists.tensors, self.cell, self.keep, self.pad]


def _lists(table: BlockTable, unpadded: BlockTable, padded: bool, device) -> ChunkLists:
    # Unmasked: kept whole and the entry chunk has full length (loads need no bounds).
    entry = torch.diff(table.kv_bounds) == table.kv_block
    unmasked = (table.state == FULL) & entry
    masked = (table.state != SKIP) & ~unmasked
    out = []
    for hit in (unmasked, masked):
        count, idx = index_lists(hit)
        idx = idx[..., : max(int(count.max()), 1)]
        if hit is unmasked:  # the kernels read these entries' first tokens directly
            idx = table.kv_bounds[idx.long()].to(torch.int32)
        out += [count.to(device), idx.contiguous().to(device)]
    return ChunkLists(
        tensors=tuple(out),
        has_masked=bool(masked.any()),
        # Pairs the pattern keeps only in part, padding aside, need the cell lookup.
        cell_mask=bool((unpadded.state == PARTIAL).any()),
        pad_mask=padded,
    )


@functools.lru_cache(maxsize=32)
def _cached_tables(layout, pattern, lengths, block_m, block_n, device) -> KernelTables:
    lens = None if lengths is None else torch.tensor(lengths)
    sizes = dict(q_block=block_m, kv_block=block_n, aligned=True)
    table = block_table(layout, pattern, text_lengths=lens, **sizes)
    unpadded = table if lens is None else block_table(layout, pattern, **sizes)
    padded = lens is not None and bool((lens < layout.text_tokens).any())
    c = cells(layout, pattern.frame_level)
    keep = pattern.keep(c.coords, c.coords, layout).to(torch.int8)
    S = layout.seq_len
    if lens is None:
        pad = torch.tensor([[S, S]])
    else:  # keys in [pad_lo, pad_hi) are padded text
        lo = layout.text_slice.start + lens
        pad = torch.stack([lo, torch.full_like(lo, layout.text_slice.stop)], 1)
    return KernelTables(
        q_bounds=table.q_bounds.to(device=device, dtype=torch.int32),
        kv_bounds=table.kv_bounds.to(device=device, dtype=torch.int32),
        rows=_lists(table, unpadded, padded, device),
        cols=_lists(table.transposed(), unpadded.transposed(), padded, device),
        cell=c.of_token.to(device=device, dtype=torch.int32),
        keep=keep.contiguous().to(device),
        pad=pad.to(device=device, dtype=torch.int32).contiguous(),
    )


def kernel_tables(
    layout: VideoLayout, pattern, text_lengths, block_m: int, block_n: int, device
) -> KernelTables:
    """Tile-aligned chunk tables for these chunk sizes (cached per shape and device).

    A per-head pattern's tables are the one-rule tables of its heads' rules, stacked along
    heads on the device: strategies draw every (step, layer) from a few candidate windows,
    so the few rule tables are built once and each new per-head mix costs a few copies.
    """
    lengths = None if text_lengths is None else tuple(int(x) for x in text_lengths)
    rules = pattern.head_rules()
    if rules is None or len(set(rules)) == 1:
        rule = pattern if rules is None else rules[0]
        return _cached_tables(layout, rule, lengths, block_m, block_n, str(device))
    built = {r: _cached_tables(layout, r, lengths, block_m, block_n, str(device)) for r in rules}
    return _stack_heads([built[r] for r in rules])


def _stack_heads(per_head: list[KernelTables]) -> KernelTables:
    first = per_head[0]
    return dataclasses.replace(
        first,
        rows=_stack_lists([t.rows for t in per_head]),
        cols=_stack_lists([t.cols for t in per_head]),
        keep=torch.cat([t.keep for t in per_head], dim=0),
    )


def _stack_lists(per_head: list[ChunkLists]) -> ChunkLists:
    # Counts [B, 1, n] and index lists [B, 1, n, width]: widths differ by rule, so the lists
    # are padded to the widest (entries past a row's count are never read), once per rule.
    widths = {k: max(lists.tensors[k].shape[-1] for lists in per_head) for k in (1, 3)}
    fitted: dict[int, list[torch.Tensor]] = {}
    for lists in per_head:
        if id(lists) not in fitted:
            fitted[id(lists)] = [
                F.pad(t, (0, widths[k] - t.shape[-1])) if k in widths else t
                for k, t in enumerate(lists.tensors)
            ]
    stacked = [torch.cat([fitted[id(x)][k] for x in per_head], dim=1) for k in range(4)]
    return ChunkLists(
        tensors=tuple(stacked),
        has_masked=any(x.has_masked for x in per_head),
        cell_mask=any(x.cell_mask for x in per_head),
        pad_mask=per_head[0].pad_mask,
    )


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _table_args(n, i, p_n, p_i) -> list:
    # Tables of size 1 along batch or heads broadcast with stride 0.
    def s(t):
        return [
            0 if t.shape[0] == 1 else t.stride(0),
            0 if t.shape[1] == 1 else t.stride(1),
            t.stride(2),
        ]

    return [n, i, p_n, p_i, *s(n), *s(i), *s(p_i)]


def _keep_args(keep: torch.Tensor) -> list:
    return [keep, 0 if keep.shape[0] == 1 else keep.stride(0), keep.stride(1)]


def _meta(lists: ChunkLists, p: PassConfig, tma: bool = False, ws: bool = False) -> list[int]:
    flags = (lists.has_masked, lists.cell_mask, lists.pad_mask, tma)
    return [p.block_m, p.block_n, *(int(f) for f in flags), p.num_warps, p.num_stages, int(ws)]


def _flags(meta: list[int]) -> dict:
    bm, bn, has_masked, cell_mask, pad_mask, _, warps, stages, _ = meta
    return dict(
        BLOCK_M=bm, BLOCK_N=bn, HAS_MASKED=bool(has_masked), CELL_MASK=bool(cell_mask),
        PAD_MASK=bool(pad_mask), UPCAST=interpreting(), num_warps=warps, num_stages=stages,
    )  # fmt: skip


def _launch(name: str, kernel, grid, args: list, meta: list[int], like: torch.Tensor, **kw):
    """Launch with ``meta``'s flags; on a shared-memory overflow retry with one stage fewer
    (down to one), remember it, and warn once, so a tuned config never stops a model."""
    flags = _flags(meta)
    key = (name, tuple(meta), like.shape[-1], like.dtype)
    flags["num_stages"] = LOWERED_STAGES.get(key, flags["num_stages"])
    while True:
        try:
            LAUNCHED[name] = kernel[grid](*args, **kw, **flags)
            return
        except OutOfResources as e:
            if flags["num_stages"] <= 1:
                raise
            flags["num_stages"] -= 1
            LOWERED_STAGES[key] = flags["num_stages"]
            warnings.warn(
                f"{name} kernel: {e}; retrying with num_stages={flags['num_stages']}",
                RuntimeWarning,
                stacklevel=3,
            )


def _descriptor(t: torch.Tensor, block_n: int):
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, H, S, D = t.shape
    return TensorDescriptor.from_tensor(t.view(B * H * S, D), [block_n, D])


def _fwd(q, k, v, t: list[torch.Tensor], scale: float, meta: list[int]):
    q_bounds, kv_bounds, n, i, pn, pi, cell, keep, pad = t
    B, H, S, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    tma = bool(meta[5]) and k.is_contiguous() and v.is_contiguous()
    desc_k, desc_v = (_descriptor(x, meta[1]) for x in (k, v)) if tma else (None, None)
    args = [
        q, k, v, o, lse, desc_k, desc_v,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(o), lse.stride(0), lse.stride(1),
        q_bounds, kv_bounds, *_table_args(n, i, pn, pi), cell, *_keep_args(keep), pad, H, S,
        scale * K.LOG2E,
    ]  # fmt: skip
    _launch("fwd", K._attn_fwd, (len(q_bounds) - 1, B * H), args, meta, q,
            HEAD_DIM=D, USE_TMA=tma, WARP_SPEC=bool(meta[8]))  # fmt: skip
    return o, lse


def _bwd(do, q, k, v, o, lse, t_cols, t_rows, scale, meta_cols, meta_rows):
    B, H, _, D = q.shape
    do = do.contiguous()
    # delta_i = sum_d o_id * do_id, the softmax-gradient correction term per query.
    delta = (o.float() * do.float()).sum(-1)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = [*_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do)]
    qb, kb, n, i, pn, pi, cell, keep, pad = t_cols
    args = [
        q, k, v, do, dk, dv, lse, delta, *common, *_strides3(dk), lse.stride(0), lse.stride(1),
        qb, kb, *_table_args(n, i, pn, pi), cell, *_keep_args(keep), pad, H, scale * K.LOG2E,
        scale,
    ]  # fmt: skip
    _launch("dkdv", K._attn_bwd_dkdv, (len(kb) - 1, B * H), args, meta_cols, q, HEAD_DIM=D)
    qb, kb, n, i, pn, pi, cell, keep, pad = t_rows
    args = [
        q, k, v, do, dq, lse, delta, *common, *_strides3(dq), lse.stride(0), lse.stride(1),
        qb, kb, *_table_args(n, i, pn, pi), cell, *_keep_args(keep), pad, H, scale * K.LOG2E,
        scale,
    ]  # fmt: skip
    _launch("dq", K._attn_bwd_dq, (len(qb) - 1, B * H), args, meta_rows, q, HEAD_DIM=D)
    return dq, dk, dv


@torch.library.custom_op("hasten::block_sparse_attn", mutates_args=())
def block_sparse_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tables: list[torch.Tensor],
    dkdv_tables: list[torch.Tensor],
    dq_tables: list[torch.Tensor],
    scale: float,
    meta: list[int],
    dkdv_meta: list[int],
    dq_meta: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward: ``(out, lse)`` with ``lse`` in base 2, fp32 ``[B, H, S]``.

    Each ``*_meta`` is ``[block_m, block_n, has_masked, cell_mask, pad_mask, tma, warps,
    stages, warp_specialize]`` for that kernel's tables; the backward kernels' tables ride
    along for autograd.
    """
    return _fwd(q, k, v, tables, scale, meta)


@block_sparse_attn.register_fake
def _(q, k, v, *_):
    B, H, S, _ = q.shape
    return torch.empty_like(q), q.new_empty(B, H, S, dtype=torch.float32)


@torch.library.custom_op("hasten::block_sparse_attn_bwd", mutates_args=())
def block_sparse_attn_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    dkdv_tables: list[torch.Tensor],
    dq_tables: list[torch.Tensor],
    scale: float,
    dkdv_meta: list[int],
    dq_meta: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: ``(dq, dk, dv)`` with the forward's sparsity."""
    return _bwd(do, q, k, v, o, lse, dkdv_tables, dq_tables, scale, dkdv_meta, dq_meta)


@block_sparse_attn_bwd.register_fake
def _(do, q, k, v, *_):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, tables, dkdv_tables, dq_tables, scale, _, dkdv_meta, dq_meta = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, *dkdv_tables, *dq_tables)
    ctx.scale, ctx.metas, ctx.n = scale, (dkdv_meta, dq_meta), len(tables)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, *tables = ctx.saved_tensors
    n = len(tables) // 2
    dq, dk, dv = block_sparse_attn_bwd(
        do, q, k, v, o, lse, tables[:n], tables[n:], ctx.scale, *ctx.metas
    )
    return dq, dk, dv, [None] * ctx.n, [None] * n, [None] * n, None, None, None, None


block_sparse_attn.register_autograd(_backward, setup_context=_setup_context)


def sparse_attention_triton(
    q, k, v, layout: VideoLayout, pattern, text_lengths=None, scale=None, config=None
) -> torch.Tensor:
    """Launch the Triton kernels for one validated call (``[B, H, S, D]``, tile-major)."""
    c = KernelConfig() if config is None else config
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))

    def tables(p: PassConfig) -> KernelTables:
        return kernel_tables(layout, pattern, text_lengths, p.block_m, p.block_n, q.device)

    fwd = tables(c.fwd)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        dkdv, dq = tables(c.dkdv), tables(c.dq)
    else:  # no backward can run: the forward's tables stand in for the backward's
        dkdv, dq = fwd, fwd
        c = dataclasses.replace(c, dkdv=c.fwd, dq=c.fwd)
    out, _ = block_sparse_attn(
        q,
        k,
        v,
        fwd.tensors(fwd.rows),
        dkdv.tensors(dkdv.cols),
        dq.tensors(dq.rows),
        scale,
        _meta(fwd.rows, c.fwd, c.tma, c.warp_specialize),
        _meta(dkdv.cols, c.dkdv),
        _meta(dq.rows, c.dq),
    )
    return out
