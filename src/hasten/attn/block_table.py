"""Block tables for kernels: per query block, the kv blocks kept whole and those needing a mask.

Built analytically from *cells*: maximal runs of tile-major positions that share a tile (and
a latent frame, for patterns that look at frames); all text tokens form one cell. Every pattern
is constant on a cell pair, and a block covers a contiguous range of cells, so a (query block,
kv block) pair is kept whole iff every cell pair in its two ranges is kept, and skipped iff
none is. The cost is
O(blocks^2 x cells per block^2) small gathers; the token mask is never built.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import cached_property

import torch

from hasten.attn.layout import Coords, VideoLayout

SKIP, PARTIAL, FULL = 0, 1, 2


@dataclass(frozen=True)
class Cells:
    """The cells of a layout: ``coords`` of each cell, ``size`` in tokens, ``start`` position,
    and ``of_token``, the cell index of every tile-major position."""

    coords: Coords
    size: torch.Tensor
    start: torch.Tensor
    of_token: torch.Tensor


@functools.lru_cache(maxsize=64)
def cells(layout: VideoLayout, by_frame: bool = True) -> Cells:
    """Cells of ``layout``: per tile, or per (tile, frame) slab when ``by_frame``."""
    tok = layout.token_coords()
    frame = tok.frame if by_frame else torch.zeros_like(tok.frame)
    key = torch.cat([tok.tile, frame[:, None], tok.text[:, None].long()], dim=1)
    new = torch.ones(layout.seq_len, dtype=torch.bool)
    new[1:] = (key[1:] != key[:-1]).any(dim=1)
    of_token = torch.cumsum(new, 0) - 1
    start = torch.nonzero(new).squeeze(1)
    size = torch.diff(start, append=torch.tensor([layout.seq_len]))
    coords = Coords(tile=tok.tile[start], frame=tok.frame[start], text=tok.text[start])
    return Cells(coords=coords, size=size, start=start, of_token=of_token)


@dataclass(frozen=True)
class BlockTable:
    """Which (query chunk, kv chunk) pairs a kernel computes, per sample and head.

    The sequence is cut into query chunks at ``q_bounds`` and kv chunks at ``kv_bounds``
    (``[n + 1]`` positions, from 0 to ``seq_len``): fixed-size blocks, or tile-aligned chunks
    of at most ``q_block`` / ``kv_block`` tokens (``aligned``). ``state[b, h, i, j]`` is
    ``SKIP`` (0), ``PARTIAL`` (1: run with the element mask) or ``FULL`` (2: every pair
    kept). ``b`` and ``h`` have size 1 when the table is the same for every sample or head.
    The index views follow FlexAttention's ``BlockMask`` convention: per query chunk, the
    count and the ascending indices of partial kv chunks, and of full ones.
    """

    state: torch.Tensor
    q_bounds: torch.Tensor
    kv_bounds: torch.Tensor
    q_block: int
    kv_block: int
    aligned: bool = False

    @property
    def seq_len(self) -> int:
        return int(self.q_bounds[-1])

    @property
    def num_q_blocks(self) -> int:
        return self.state.shape[-2]

    @property
    def num_kv_blocks(self) -> int:
        return self.state.shape[-1]

    @cached_property
    def partial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kv_num_blocks [B,H,nq], kv_indices [B,H,nq,nk])`` of partial chunks."""
        return index_lists(self.state == PARTIAL)

    @cached_property
    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(full_kv_num_blocks, full_kv_indices)`` of fully kept chunks."""
        return index_lists(self.state == FULL)

    def computed_fraction(self) -> float:
        """Fraction of token pairs inside the chunk pairs a kernel computes."""
        q = torch.diff(self.q_bounds).double()
        k = torch.diff(self.kv_bounds).double()
        run = (self.state != SKIP).double()
        return float((q @ run @ k).mean()) / self.seq_len**2

    def transposed(self) -> BlockTable:
        """The same table seen from the kv side (per kv chunk, its query chunks)."""
        return BlockTable(
            self.state.transpose(-1, -2),
            self.kv_bounds,
            self.q_bounds,
            self.kv_block,
            self.q_block,
            self.aligned,
        )

    def to(self, device: torch.device | str) -> BlockTable:
        return BlockTable(
            self.state.to(device),
            self.q_bounds.to(device),
            self.kv_bounds.to(device),
            self.q_block,
            self.kv_block,
            self.aligned,
        )


def index_lists(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``hit [..., n]``: the count and the ascending indices of its True entries
    (int32; the indices past the count are padding)."""
    count = hit.sum(-1, dtype=torch.int32)
    order = torch.argsort(hit.to(torch.int8), dim=-1, descending=True, stable=True)
    return count, order.to(torch.int32)


def chunk_bounds(layout: VideoLayout, block: int, aligned: bool) -> torch.Tensor:
    """``[n + 1]`` chunk boundaries: every ``block`` tokens, or within each tile (and the text)."""
    S = layout.seq_len
    if not aligned:
        return torch.cat([torch.arange(0, S, block), torch.tensor([S])])
    c = cells(layout, by_frame=False)
    pieces = (c.size + block - 1) // block
    first = torch.repeat_interleave(c.start, pieces)
    rank = torch.arange(len(first)) - torch.repeat_interleave(
        torch.cumsum(pieces, 0) - pieces, pieces
    )
    return torch.cat([first + rank * block, torch.tensor([S])])


def _chunk_cell_ranges(of_token: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """``[n_chunks, span]`` cell indices each chunk covers (repeats pad short ranges)."""
    lo, hi = of_token[bounds[:-1]], of_token[bounds[1:] - 1]
    span = int((hi - lo).max()) + 1
    return torch.minimum(lo[:, None] + torch.arange(span)[None, :], hi[:, None])


def _with_padding(layout, c: Cells, keep: torch.Tensor, valid_text: int):
    """Cell ids and keep matrix once the text tail past ``valid_text`` is padding.

    The padding becomes a cell of its own right after the text cell (the whole text cell
    when nothing is valid) whose column nobody keeps; as queries, padded positions behave
    like text. Ids stay increasing along the sequence, so chunks still cover ranges.
    """
    if valid_text >= layout.text_tokens:
        return c.of_token, keep
    text_start = layout.text_slice.start
    tid = int(c.of_token[text_start])
    of_token = c.of_token
    if valid_text > 0:
        of_token = of_token + (torch.arange(len(of_token)) >= text_start + valid_text)
        for dim in (1, 2):
            keep = torch.cat(
                [keep.narrow(dim, 0, tid + 1), keep.narrow(dim, tid, keep.shape[dim] - tid)],
                dim=dim,
            )
        tid += 1
    keep = keep.clone()
    keep[:, :, tid] = False
    return of_token, keep


def _state(layout, pattern, qb: torch.Tensor, kb: torch.Tensor, valid_text: int) -> torch.Tensor:
    """``[H, nq, nk]`` chunk states when the first ``valid_text`` text tokens are real."""
    c = cells(layout, pattern.frame_level)
    keep = pattern.keep(c.coords, c.coords, layout)  # [H, C, C]
    of_token, keep = _with_padding(layout, c, keep, valid_text)
    qc = _chunk_cell_ranges(of_token, qb)
    kc = _chunk_cell_ranges(of_token, kb)
    # Chunk over query blocks so the gathered cell pairs stay under ~64M booleans.
    step = max(1, (1 << 26) // (keep.shape[0] * qc.shape[1] * kc.numel()))
    parts = []
    for i in range(0, len(qc), step):
        pairs = keep[:, qc[i : i + step, :, None, None], kc[None, None]]  # [H, nq, sq, nk, sk]
        full, any_ = pairs.all(4).all(2), pairs.any(4).any(2)
        parts.append(torch.where(full, FULL, torch.where(any_, PARTIAL, SKIP)).to(torch.int8))
    return torch.cat(parts, dim=1)


def block_table(
    layout: VideoLayout,
    pattern,
    *,
    q_block: int = 128,
    kv_block: int = 128,
    text_lengths: torch.Tensor | None = None,
    aligned: bool = False,
) -> BlockTable:
    """The analytic block table of ``pattern`` on ``layout``.

    With ``aligned=False`` chunks are fixed blocks of ``q_block`` / ``kv_block`` tokens
    (FlexAttention's convention: a block running past the sequence end is at most
    ``PARTIAL``). With ``aligned=True`` chunks never straddle a tile or the video/text
    boundary, so tile-level patterns (STA) give only ``FULL`` and ``SKIP`` pairs even on
    ragged canvases; a kernel then masks only each chunk's end. With ``text_lengths``
    (valid text tokens per sample) padded text keys are dropped and the table gets one
    entry per sample (computed once per distinct length).
    """
    for name, b in (("q_block", q_block), ("kv_block", kv_block)):
        if not isinstance(b, int) or b < 1:
            raise ValueError(f"{name} must be a positive number of tokens, got {b!r}")
    pattern.validate(layout)
    if text_lengths is not None:
        layout.check_text_lengths(text_lengths, len(text_lengths))
    lengths = [layout.text_tokens] if text_lengths is None else [int(x) for x in text_lengths]
    qb = chunk_bounds(layout, q_block, aligned)
    kb = chunk_bounds(layout, kv_block, aligned)
    states = {n: _state(layout, pattern, qb, kb, n) for n in set(lengths)}
    state = torch.stack([states[n] for n in lengths])
    S = layout.seq_len
    if not aligned:  # blocks hanging over the sequence end need bounds masks
        if S % q_block:
            state[..., -1, :] = state[..., -1, :].clamp(max=PARTIAL)
        if S % kv_block:
            state[..., -1] = state[..., -1].clamp(max=PARTIAL)
    return BlockTable(state, qb, kb, q_block, kv_block, aligned)


def chunk_state_from_mask(mask: torch.Tensor, q_bounds, kv_bounds) -> torch.Tensor:
    """Chunk states derived from a dense token mask ``[..., S, S]`` (the slow oracle path)."""
    # 2D prefix sums: kept pairs in every chunk rectangle, compared with its area.
    counts = torch.nn.functional.pad(mask.to(torch.int64).cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    qb, kb = torch.as_tensor(q_bounds), torch.as_tensor(kv_bounds)
    r0, r1, c0, c1 = qb[:-1, None], qb[1:, None], kb[None, :-1], kb[None, 1:]
    kept = counts[..., r1, c1] - counts[..., r0, c1] - counts[..., r1, c0] + counts[..., r0, c0]
    area = (r1 - r0) * (c1 - c0)
    return torch.where(kept == area, FULL, torch.where(kept > 0, PARTIAL, SKIP)).to(torch.int8)


def block_state_from_mask(mask: torch.Tensor, q_block: int, kv_block: int) -> torch.Tensor:
    """Fixed-block states from a dense token mask, positions past the end counting as
    dropped (as in FlexAttention's ``create_block_mask``)."""
    S_q, S_k = mask.shape[-2:]
    nq, nk = math.ceil(S_q / q_block), math.ceil(S_k / kv_block)
    padded = mask.new_zeros(*mask.shape[:-2], nq * q_block, nk * kv_block)
    padded[..., :S_q, :S_k] = mask
    return chunk_state_from_mask(
        padded, torch.arange(nq + 1) * q_block, torch.arange(nk + 1) * kv_block
    )
