"""Drawing patterns: a readable PNG comes out, and bad requests are refused with a reason."""

from __future__ import annotations

import matplotlib.image
import pytest

from hasten.attn import plot
from hasten.attn.layout import VideoLayout
from hasten.attn.patterns import Dense, FrameTiles, SlidingTile
from hasten.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = VideoLayout((4, 8, 8), (2, 4, 4), text_tokens=8)


def _check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 20_000  # three panels of pixels, not an empty canvas
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 600 <= width <= 3000 and 400 <= height <= 3000


@pytest.mark.parametrize(
    "pattern", [SlidingTile((1, 1, 1)), FrameTiles(1), Dense()], ids=["sta", "frames", "dense"]
)
def test_writes_png(tmp_path, pattern):
    path = plot.draw_pattern(SMALL, pattern, tmp_path / "p.png", query_tile=(1, 1, 1))
    assert path == tmp_path / "p.png"
    _check_png(path)


def test_per_head_pattern_draws_chosen_head(tmp_path):
    pattern = SlidingTile([(3, 3, 3), (1, 1, 1)])
    layout = VideoLayout((6, 12, 16), (2, 4, 4))
    path = plot.draw_pattern(layout, pattern, tmp_path / "h1.png", head=1, text_lengths=0)
    _check_png(path)


def test_refuses_big_canvas(tmp_path):
    layout = VideoLayout((30, 48, 80), (6, 8, 8), text_tokens=256)
    with pytest.raises(ValueError, match=r"115456 tokens.*smaller canvas"):
        plot.draw_pattern(layout, SlidingTile((3, 3, 3)), tmp_path / "big.png")
    assert not (tmp_path / "big.png").exists()


@pytest.mark.parametrize(
    ("pattern", "head", "match"),
    [
        (SlidingTile([(3, 3, 3), (1, 1, 1)]), 2, r"head 2 is out of range.*2 heads"),
        (SlidingTile([(3, 3, 3), (1, 1, 1)]), -1, r"head -1 is out of range"),
        (SlidingTile((3, 3, 3)), 1, r"one rule for all heads; pass head=0"),
    ],
)
def test_refuses_head_out_of_range(tmp_path, pattern, head, match):
    with pytest.raises(ValueError, match=match):
        plot.draw_pattern(SMALL, pattern, tmp_path / "p.png", head=head)


def test_refuses_query_tile_outside_grid(tmp_path):
    with pytest.raises(ValueError, match=r"not a tile of.*\(1, 1, 1\)"):
        plot.draw_pattern(SMALL, Dense(), tmp_path / "p.png", query_tile=(2, 0, 0))


def test_show_command(tmp_path, capsys):
    out = tmp_path / "show.png"
    argv = ["attn", "show", "--canvas", "4x8x8", "--tile", "2x4x4", "--window", "1x1x1"]
    assert main([*argv, "-o", str(out)]) == 0
    _check_png(out)
    printed = capsys.readouterr().out
    assert str(out) in printed and "density" in printed
