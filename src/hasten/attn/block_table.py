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
    """Which (query block, kv block) pairs a kernel computes, per sample and head.

    ``state[b, h, i, j]`` is ``SKIP`` (0), ``PARTIAL`` (1: run with the element mask) or
    ``FULL`` (2: every pair kept, run unmasked). ``b`` and ``h`` have size 1 when the table
    is the same for every sample or head. The index views follow FlexAttention's
    ``BlockMask`` convention: per query block, the count and the (ascending) indices of
    partial kv blocks, and of full kv blocks, padded to ``num_kv_blocks``.
    """

    state: torch.Tensor
    q_block: int
    kv_block: int
    seq_len: int

    @property
    def num_q_blocks(self) -> int:
        return self.state.shape[-2]

    @property
    def num_kv_blocks(self) -> int:
        return self.state.shape[-1]

    def _indices(self, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self.state == which
        count = hit.sum(-1, dtype=torch.int32)
        order = torch.argsort(hit.to(torch.int8), dim=-1, descending=True, stable=True)
        return count, order.to(torch.int32)

    @cached_property
    def partial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kv_num_blocks [B,H,nq], kv_indices [B,H,nq,nk])`` of partial blocks."""
        return self._indices(PARTIAL)

    @cached_property
    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(full_kv_num_blocks, full_kv_indices)`` of fully kept blocks."""
        return self._indices(FULL)

    def computed_fraction(self) -> float:
        """Fraction of block pairs a kernel computes (partial or full)."""
        return float((self.state != SKIP).float().mean())

    def to(self, device: torch.device | str) -> BlockTable:
        return BlockTable(self.state.to(device), self.q_block, self.kv_block, self.seq_len)


def _block_cell_ranges(of_token: torch.Tensor, block: int) -> torch.Tensor:
    """``[n_blocks, span]`` cell indices each block covers (repeats pad short ranges)."""
    seq_len = len(of_token)
    starts = torch.arange(0, seq_len, block)
    ends = torch.clamp(starts + block, max=seq_len) - 1
    lo, hi = of_token[starts], of_token[ends]
    span = int((hi - lo).max()) + 1
    return torch.minimum(lo[:, None] + torch.arange(span)[None, :], hi[:, None])


def _with_padding(layout, c: Cells, keep: torch.Tensor, valid_text: int):
    """Cell ids and keep matrix once the text tail past ``valid_text`` is padding.

    The padding becomes a cell of its own right after the text cell (the whole text cell
    when nothing is valid) whose column nobody keeps; as queries, padded positions behave
    like text. Ids stay increasing along the sequence, so blocks still cover ranges.
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


def _state(layout, pattern, q_block: int, kv_block: int, valid_text: int) -> torch.Tensor:
    """``[H, nq, nk]`` block states when the first ``valid_text`` text tokens are real."""
    c = cells(layout, pattern.frame_level)
    keep = pattern.keep(c.coords, c.coords, layout)  # [H, C, C]
    of_token, keep = _with_padding(layout, c, keep, valid_text)
    qc = _block_cell_ranges(of_token, q_block)
    kc = _block_cell_ranges(of_token, kv_block)
    # Chunk over query blocks so the gathered cell pairs stay under ~64M booleans.
    step = max(1, (1 << 26) // (keep.shape[0] * qc.shape[1] * kc.numel()))
    parts = []
    for i in range(0, len(qc), step):
        pairs = keep[:, qc[i : i + step, :, None, None], kc[None, None]]  # [H, nq, sq, nk, sk]
        full, any_ = pairs.all(4).all(2), pairs.any(4).any(2)
        parts.append(torch.where(full, FULL, torch.where(any_, PARTIAL, SKIP)).to(torch.int8))
    state = torch.cat(parts, dim=1)
    # Blocks hanging over the sequence end need bounds masks.
    S = layout.seq_len
    if S % q_block:
        state[:, -1, :] = state[:, -1, :].clamp(max=PARTIAL)
    if S % kv_block:
        state[:, :, -1] = state[:, :, -1].clamp(max=PARTIAL)
    return state


def block_table(
    layout: VideoLayout,
    pattern,
    *,
    q_block: int = 128,
    kv_block: int = 128,
    text_lengths: torch.Tensor | None = None,
) -> BlockTable:
    """The analytic block table of ``pattern`` on ``layout`` for the given block sizes.

    Blocks that run past the end of the sequence are at most ``PARTIAL`` (their tail is
    out of bounds); with ``text_lengths`` (valid text tokens per sample) padded text keys
    are dropped, so the table gets one entry per sample (computed once per distinct length).
    """
    for name, b in (("q_block", q_block), ("kv_block", kv_block)):
        if b < 1:
            raise ValueError(f"{name} must be a positive number of tokens, got {b}")
    pattern.validate(layout)
    if text_lengths is not None:
        layout.check_text_lengths(text_lengths, len(text_lengths))
    lengths = [layout.text_tokens] if text_lengths is None else [int(x) for x in text_lengths]
    states = {n: _state(layout, pattern, q_block, kv_block, n) for n in set(lengths)}
    state = torch.stack([states[n] for n in lengths])
    return BlockTable(state=state, q_block=q_block, kv_block=kv_block, seq_len=layout.seq_len)


def block_state_from_mask(mask: torch.Tensor, q_block: int, kv_block: int) -> torch.Tensor:
    """Block states derived from a dense token mask ``[..., S, S]`` (the slow oracle path).

    Positions past the end count as dropped, as in FlexAttention's ``create_block_mask``.
    """
    S_q, S_k = mask.shape[-2:]
    nq, nk = math.ceil(S_q / q_block), math.ceil(S_k / kv_block)
    padded = mask.new_zeros(*mask.shape[:-2], nq * q_block, nk * kv_block)
    padded[..., :S_q, :S_k] = mask
    blocks = padded.unflatten(-1, (nk, kv_block)).unflatten(-3, (nq, q_block))
    any_ = blocks.any(-1).any(-2)
    all_ = blocks.all(-1).all(-2)
    return torch.where(all_, FULL, torch.where(any_, PARTIAL, SKIP)).to(torch.int8)
