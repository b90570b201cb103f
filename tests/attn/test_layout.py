"""The raster <-> tile-major permutation: exact, invertible, contiguous tiles, any canvas."""

from __future__ import annotations

import itertools

import pytest
import torch

from hasten.attn import VideoLayout

CANVASES = [
    ((4, 8, 8), (2, 4, 4)),  # divisible
    ((30, 48, 80), (6, 8, 8)),  # HunyuanVideo 720p x 117 frames
    ((21, 45, 80), (6, 8, 8)),  # Wan 720p x 81 frames: ragged t and h
    ((13, 30, 45), (6, 8, 8)),  # CogVideoX 480p x 49 frames: ragged everywhere
    ((5, 7, 9), (2, 3, 4)),
    ((1, 1, 1), (1, 1, 1)),
    ((3, 5, 7), (3, 5, 7)),  # one tile
    ((7, 3, 11), (7, 1, 2)),
]


@pytest.mark.parametrize(("canvas", "tile"), CANVASES)
@pytest.mark.parametrize(("text", "first"), [(0, False), (5, False), (7, True)])
def test_round_trip_is_exact(canvas, tile, text, first, seed):
    layout = VideoLayout(canvas, tile, text_tokens=text, text_first=first)
    x = torch.randn(2, layout.seq_len, 3)
    tiles = layout.to_tiles(x, dim=1)
    assert tiles.shape == x.shape
    assert torch.equal(layout.from_tiles(tiles, dim=1), x)
    # The other direction too, and on another dim.
    y = torch.randn(layout.seq_len, 4)
    assert torch.equal(layout.to_tiles(layout.from_tiles(y, dim=0), dim=0), y)


@pytest.mark.parametrize(("canvas", "tile"), CANVASES)
def test_permutation_is_a_bijection(canvas, tile):
    layout = VideoLayout(canvas, tile)
    pos = layout.raster_to_tile_index()
    assert torch.equal(torch.sort(pos).values, torch.arange(layout.video_tokens))
    assert torch.equal(pos[layout.tile_to_raster_index()], torch.arange(layout.video_tokens))


@pytest.mark.parametrize(("canvas", "tile"), CANVASES)
def test_tiles_are_contiguous_raster_boxes(canvas, tile):
    """Walk the tile grid by hand: each tile is one contiguous run, raster order inside."""
    layout = VideoLayout(canvas, tile)
    T, H, W = canvas
    src = layout.tile_to_raster_index().tolist()
    expected = []
    ranges = [range(0, n, t) for n, t in zip(canvas, tile, strict=True)]
    for t0, h0, w0 in itertools.product(*ranges):
        for t, h, w in itertools.product(
            range(t0, min(t0 + tile[0], T)),
            range(h0, min(h0 + tile[1], H)),
            range(w0, min(w0 + tile[2], W)),
        ):
            expected.append((t * H + h) * W + w)
    assert src == expected
    sizes = layout.tile_sizes()
    assert sizes.shape == layout.grid and int(sizes.sum()) == layout.video_tokens


def test_text_tokens_are_not_permuted():
    layout = VideoLayout((4, 4, 4), (2, 2, 2), text_tokens=3)
    x = torch.arange(layout.seq_len)
    assert torch.equal(layout.to_tiles(x, dim=0)[-3:], x[-3:])
    first = VideoLayout((4, 4, 4), (2, 2, 2), text_tokens=3, text_first=True)
    assert torch.equal(first.to_tiles(x, dim=0)[:3], x[:3])
    assert first.video_slice == slice(3, 67) and first.text_slice == slice(0, 3)


def test_hunyuan_geometry():
    layout = VideoLayout((30, 48, 80), (6, 8, 8), text_tokens=256)
    assert layout.grid == (5, 6, 10) and layout.num_tiles == 300
    assert layout.video_tokens == 115_200 and layout.seq_len == 115_456
    assert layout.divisible and not VideoLayout((21, 45, 80)).divisible


def test_bad_layouts_explain_themselves():
    with pytest.raises(ValueError, match=r"tile \(6, 8, 8\) is larger than canvas \(4, 48, 80\)"):
        VideoLayout((4, 48, 80), (6, 8, 8))
    with pytest.raises(ValueError, match="three positive ints"):
        VideoLayout((4, 48), (1, 2, 2))
    with pytest.raises(ValueError, match="text_tokens"):
        VideoLayout((4, 4, 4), (2, 2, 2), text_tokens=-1)
    layout = VideoLayout((4, 4, 4), (2, 2, 2), text_tokens=2)
    with pytest.raises(ValueError, match="66 = 64 video \\+ 2 text"):
        layout.to_tiles(torch.zeros(1, 65, 8), dim=1)
