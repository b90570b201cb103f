"""Analytic block tables equal the ones derived from the dense token mask, exactly."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from hasten.attn import Dense, FrameTiles, SlidingTile, VideoLayout, attention_mask, block_table
from hasten.attn.backends.flex import flex_block_mask
from hasten.attn.block_table import (
    FULL,
    PARTIAL,
    block_state_from_mask,
    cells,
    chunk_bounds,
    chunk_state_from_mask,
)
from hasten.attn.masks import mask_mod

CASES = [
    # (canvas, tile, text, text_first, pattern)
    ((4, 8, 8), (2, 4, 4), 0, False, SlidingTile((1, 1, 1))),
    ((6, 8, 12), (2, 4, 4), 0, False, SlidingTile((1, 1, 3))),
    ((5, 7, 9), (2, 3, 4), 0, False, SlidingTile((1, 3, 1))),  # ragged
    ((5, 7, 9), (2, 3, 4), 11, False, SlidingTile([(1, 1, 1), (3, 3, 3), (1, 3, 3)])),
    ((7, 9, 10), (3, 4, 4), 9, True, SlidingTile((1, 3, 3))),  # ragged, text first
    ((6, 8, 8), (2, 4, 4), 7, False, FrameTiles(2)),
    ((7, 6, 6), (3, 4, 4), 5, True, FrameTiles([1, 3])),  # frames inside ragged tiles
    ((4, 8, 8), (2, 4, 4), 13, False, Dense()),
]
BLOCKS = [(16, 16), (32, 16), (64, 32), (24, 40)]


def _id(case):
    canvas, tile, text, first, pattern = case
    return f"{canvas}/{tile}/text{text}{'F' if first else ''}/{pattern!r}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
@pytest.mark.parametrize(("qb", "kb"), BLOCKS)
def test_analytic_table_equals_mask_derived(case, qb, kb):
    canvas, tile, text, first, pattern = case
    layout = VideoLayout(canvas, tile, text_tokens=text, text_first=first)
    lengths = torch.tensor([text, text // 2, 0]) if text else None
    batch = 3 if text else 1
    mask = attention_mask(layout, pattern, lengths, batch)
    table = block_table(layout, pattern, q_block=qb, kv_block=kb, text_lengths=lengths)
    expected = block_state_from_mask(mask, qb, kb)
    assert table.state.shape == (batch, pattern.heads or 1, *expected.shape[-2:])
    assert torch.equal(table.state, expected.expand_as(table.state))


def test_divisible_hunyuan_table_is_exactly_the_tile_window():
    layout = VideoLayout((30, 48, 80), (6, 8, 8))
    table = block_table(layout, SlidingTile((3, 3, 3)), q_block=128, kv_block=128)
    # Tiles of 384 tokens are three whole blocks: no partial blocks at all.
    assert int((table.state == PARTIAL).sum()) == 0
    assert int((table.state == FULL).sum(-1).unique()) == 27 * 3


def test_text_padding_and_sequence_tail_make_blocks_partial():
    layout = VideoLayout((4, 8, 8), (2, 4, 4), text_tokens=40)  # 256 video + 40 text
    lengths = torch.tensor([40, 8])
    table = block_table(layout, Dense(), q_block=32, kv_block=32, text_lengths=lengths)
    # kv blocks 8 (256..287) and 9 (288..295, past the end from 296 on): sample 0 has no padding.
    assert table.state[0, 0, 0, 8] == FULL and table.state[0, 0, 0, 9] == PARTIAL
    # Sample 1 keeps 8 text keys: block 8 is partial, block 9 all padding, so skipped.
    assert table.state[1, 0, 0, 8] == PARTIAL and table.state[1, 0, 0, 9] == 0


def test_index_views_follow_blockmask_convention():
    layout = VideoLayout((5, 7, 9), (2, 3, 4), text_tokens=4)
    table = block_table(layout, SlidingTile((1, 1, 3)), q_block=16, kv_block=16)
    num, idx = table.full
    for i in range(table.num_q_blocks):
        n = int(num[0, 0, i])
        expect = (table.state[0, 0, i] == FULL).nonzero().flatten()
        assert torch.equal(idx[0, 0, i, :n].long(), expect)


def _state_of(block_mask) -> torch.Tensor:
    """The (skip, partial, full) state matrix a FlexAttention BlockMask encodes."""
    nq = block_mask.kv_num_blocks.shape[-1]
    nk = block_mask.kv_indices.shape[-1]
    state = torch.zeros(*block_mask.kv_num_blocks.shape[:2], nq, nk, dtype=torch.int8)
    for nums, idx, value in (
        (block_mask.kv_num_blocks, block_mask.kv_indices, PARTIAL),
        (block_mask.full_kv_num_blocks, block_mask.full_kv_indices, FULL),
    ):
        keep = torch.arange(nk) < nums[..., None]
        src = torch.where(keep, value, 0).to(torch.int8)
        state = state.scatter_reduce(-1, idx.long(), src, reduce="amax", include_self=True)
    return state


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_flex_block_mask_equals_create_block_mask(case):
    canvas, tile, text, first, pattern = case
    layout = VideoLayout(canvas, tile, text_tokens=text, text_first=first)
    lengths = torch.tensor([text, max(text - 3, 0)]) if text else None
    batch = 2 if text else 1
    ours = flex_block_mask(layout, pattern, lengths, block=32)
    heads = pattern.heads or 1
    S = layout.seq_len
    theirs = create_block_mask(
        mask_mod(layout, pattern, lengths), batch, heads, S, S, device="cpu", BLOCK_SIZE=32
    )
    assert torch.equal(_state_of(ours).expand(batch, heads, -1, -1), _state_of(theirs))
    assert ours.seq_lengths == theirs.seq_lengths


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
@pytest.mark.parametrize(("qb", "kb"), [(16, 16), (32, 8), (24, 40)])
def test_tile_aligned_table_equals_mask_derived(case, qb, kb):
    canvas, tile, text, first, pattern = case
    layout = VideoLayout(canvas, tile, text_tokens=text, text_first=first)
    lengths = torch.tensor([text, text // 3]) if text else None
    batch = 2 if text else 1
    mask = attention_mask(layout, pattern, lengths, batch)
    table = block_table(
        layout, pattern, q_block=qb, kv_block=kb, text_lengths=lengths, aligned=True
    )
    expected = chunk_state_from_mask(mask, table.q_bounds, table.kv_bounds)
    assert torch.equal(table.state, expected.expand_as(table.state))
    assert torch.equal(table.transposed().state, table.state.transpose(-1, -2))


@pytest.mark.parametrize(
    ("canvas", "text", "first"), [((21, 45, 80), 0, False), ((13, 30, 45), 226, True)]
)
def test_tile_aligned_chunks_never_straddle_tiles(canvas, text, first):
    layout = VideoLayout(canvas, (6, 8, 8), text_tokens=text, text_first=first)
    bounds = chunk_bounds(layout, 128, aligned=True)
    sizes = torch.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == layout.seq_len and (sizes >= 1).all()
    assert (sizes <= 128).all()
    cell = cells(layout, by_frame=False).of_token
    assert torch.equal(cell[bounds[:-1]], cell[bounds[1:] - 1])  # first and last in one tile
    # So sliding tiles need no element masks at all, ragged or not.
    table = block_table(layout, SlidingTile((3, 3, 3)), aligned=True)
    assert int((table.state == PARTIAL).sum()) == 0
