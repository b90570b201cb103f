"""Pattern predicates: STA and FrameTiles against hand-written rules, paper numbers, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from hasten.attn import Dense, FrameTiles, SlidingTile, VideoLayout


def naive_sta(layout: VideoLayout, window) -> torch.Tensor:
    """The spec's rule written token pair by token pair in raster order, then permuted."""
    T, H, W = layout.canvas
    grid = layout.grid
    coords = list(itertools.product(range(T), range(H), range(W)))
    tiles = [tuple(c // t for c, t in zip(xyz, layout.tile, strict=True)) for xyz in coords]

    def keeps(qt, kt):
        for q, k, w, n in zip(qt, kt, window, grid, strict=True):
            if w >= n:
                continue
            c = min(max(q, w // 2), n - 1 - w // 2)
            if abs(k - c) > w // 2:
                return False
        return True

    raster = torch.tensor([[keeps(a, b) for b in tiles] for a in tiles])
    src = layout.tile_to_raster_index()
    return raster[src][:, src]


@pytest.mark.parametrize(
    ("canvas", "tile", "window"),
    [
        ((1, 1, 10), (1, 1, 1), (1, 1, 3)),
        ((4, 6, 8), (2, 2, 2), (1, 3, 3)),
        ((5, 7, 9), (2, 3, 4), (3, 1, 3)),  # ragged
        ((6, 6, 6), (2, 2, 2), (3, 5, 7)),  # windows beyond the grid
        ((3, 8, 8), (1, 2, 2), (3, 3, 1)),
    ],
)
def test_sliding_tile_matches_the_spec_rule(canvas, tile, window):
    layout = VideoLayout(canvas, tile)
    assert torch.equal(SlidingTile(window).mask(layout), naive_sta(layout, window))


def test_sliding_tile_window_shifts_inward_at_borders():
    layout = VideoLayout((1, 1, 10), (1, 1, 1))
    m = SlidingTile((1, 1, 3)).mask(layout)
    assert m[0].nonzero().flatten().tolist() == [0, 1, 2]  # clamped centre 1
    assert m[5].nonzero().flatten().tolist() == [4, 5, 6]
    assert m[9].nonzero().flatten().tolist() == [7, 8, 9]  # clamped centre 8


@pytest.mark.parametrize("window", [(3, 3, 3), (3, 3, 5), (5, 5, 5), (1, 6, 10), (5, 6, 10)])
def test_every_query_tile_keeps_the_same_number_of_tiles(window):
    layout = VideoLayout((10, 12, 20), (2, 2, 2))  # the 5x6x10 grid of HunyuanVideo 720p
    pattern = SlidingTile(window)
    m = pattern.mask(layout)
    per_query = m.sum(1).unique()
    assert per_query.tolist() == [pattern.kept_tiles(layout)[0] * 8]


def test_hunyuan_sparsities_from_the_spec():
    layout = VideoLayout((30, 48, 80), (6, 8, 8))
    assert SlidingTile((3, 3, 3)).density(layout) == pytest.approx(27 / 300)
    assert SlidingTile((5, 5, 5)).density(layout) == pytest.approx(125 / 300)
    assert SlidingTile((5, 6, 10)).density(layout) == pytest.approx(1.0)
    assert Dense().density(layout) == 1.0


@pytest.mark.parametrize(
    ("frames", "k", "paper"),
    [
        *[(8, 4, 17.60), (8, 3, 29.88), (8, 2, 45.47), (8, 1, 64.38)],
        *[(24, 12, 21.51), (24, 8, 40.30), (24, 6, 51.88), (24, 4, 64.98), (24, 3, 72.05)],
    ],
)
def test_frame_tiles_reproduce_table_1(frames, k, paper):
    """Efficient-vDiT Table 1 sparsities (percent), within 1.5 points."""
    layout = VideoLayout((frames, 8, 8), (2, 4, 4))
    assert 100 * FrameTiles(k).sparsity(layout) == pytest.approx(paper, abs=1.5)


def test_frame_tiles_rule():
    layout = VideoLayout((4, 2, 2), (2, 2, 2))
    m = FrameTiles(1).mask(layout)
    frame = layout.token_coords().frame
    fq, fk = frame[:, None], frame[None, :]
    assert torch.equal(m, (fq == fk) | (fq < 1) | (fk < 1))


@pytest.mark.parametrize("text_first", [False, True])
def test_text_rules(text_first):
    layout = VideoLayout((4, 4, 4), (2, 2, 2), text_tokens=5, text_first=text_first)
    m = SlidingTile((1, 1, 1)).mask(layout)
    text = layout.text_slice
    video = layout.video_slice
    assert m[text].all()  # text queries keep everything
    assert m[video, text].all()  # video queries keep all text keys
    assert not m[video, video].all()  # and their own pattern on video keys
    ref = SlidingTile((1, 1, 1)).mask(VideoLayout((4, 4, 4), (2, 2, 2)))
    assert torch.equal(m[video, video], ref)


def test_per_head_windows_stack_single_head_masks():
    layout = VideoLayout((4, 6, 8), (2, 2, 2), text_tokens=3)
    windows = [(1, 1, 1), (3, 3, 3), (1, 3, 1)]
    m = SlidingTile(windows).mask(layout)
    assert m.shape == (3, layout.seq_len, layout.seq_len)
    for h, w in enumerate(windows):
        assert torch.equal(m[h], SlidingTile(w).mask(layout))
    assert SlidingTile(windows).density(layout) == pytest.approx(
        [SlidingTile(w).density(layout) for w in windows]
    )


@pytest.mark.parametrize(
    "pattern",
    [SlidingTile((3, 3, 3)), SlidingTile([(1, 3, 3), (3, 1, 1)]), FrameTiles(2), Dense()],
)
def test_density_equals_mask_mean(pattern):
    layout = VideoLayout((5, 7, 9), (2, 3, 4), text_tokens=6)
    m = pattern.mask(layout).float()
    mean = m.mean().item() if m.dim() == 2 else m.mean((1, 2)).tolist()
    assert pattern.density(layout) == pytest.approx(mean)


def test_bad_patterns_explain_themselves():
    layout = VideoLayout((30, 48, 80), (6, 8, 8))
    with pytest.raises(ValueError, match=r"even and smaller than the tile grid.*such as 3 or 5"):
        SlidingTile((4, 3, 3)).validate(layout)
    with pytest.raises(ValueError, match=r"window\[1\]"):
        SlidingTile([(3, 3, 3), (3, 2, 3)]).validate(layout)
    with pytest.raises(ValueError, match="three positive ints"):
        SlidingTile((3, 3))
    with pytest.raises(TypeError, match="three ints"):
        SlidingTile(3)
    with pytest.raises(ValueError, match=r"exceed the 30 latent frames.*0\.\.30"):
        FrameTiles(31).validate(layout)
    with pytest.raises(ValueError, match=">= 0"):
        FrameTiles(-1)
