"""``hasten attn ...``: draw patterns, list backends, benchmark attention."""

from __future__ import annotations

import argparse
from pathlib import Path

from hasten.attn.layout import VideoLayout
from hasten.attn.patterns import Dense, FrameTiles, Pattern, SlidingTile


def parse_dims(text: str) -> tuple[int, int, int]:
    """``"30x48x80"`` or ``"30,48,80"`` -> ``(30, 48, 80)``."""
    parts = text.replace(",", "x").split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected three ints like 30x48x80, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def add_layout_args(p: argparse.ArgumentParser, canvas: str, tile: str) -> None:
    p.add_argument(
        "--canvas",
        type=parse_dims,
        default=parse_dims(canvas),
        help=f"latent T x H x W (default {canvas})",
    )
    p.add_argument(
        "--tile", type=parse_dims, default=parse_dims(tile), help=f"tile t x h x w (default {tile})"
    )
    p.add_argument("--text", type=int, default=0, help="text tokens (default 0)")
    p.add_argument("--text-first", action="store_true", help="text before video (CogVideoX)")


def add_pattern_args(p: argparse.ArgumentParser, window: str = "3x3x3") -> None:
    p.add_argument(
        "--pattern",
        choices=["sta", "frame-tiles", "dense"],
        default="sta",
        help="sliding tile (sta), Efficient-vDiT frame tiles, or dense (default sta)",
    )
    p.add_argument(
        "--window",
        type=parse_dims,
        default=parse_dims(window),
        help=f"STA window in tiles (default {window})",
    )
    p.add_argument(
        "--global-frames",
        type=int,
        default=1,
        help="frame-tiles: k of the k:(T-k) pattern, in latent frames (default 1)",
    )


def layout_from_args(args) -> VideoLayout:
    return VideoLayout(args.canvas, args.tile, text_tokens=args.text, text_first=args.text_first)


def pattern_from_args(args) -> Pattern:
    if args.pattern == "sta":
        return SlidingTile(args.window)
    if args.pattern == "frame-tiles":
        return FrameTiles(args.global_frames)
    return Dense()


def add_show_command(subparsers) -> None:
    """Add ``hasten attn show``: draw a pattern on a small canvas to a PNG."""
    p = subparsers.add_parser(
        "show",
        help="draw a pattern on a small canvas to a PNG",
        description="Draw the token mask, block table and one query tile's kept keys.",
    )
    add_layout_args(p, canvas="8x12x16", tile="2x2x2")
    add_pattern_args(p)
    p.add_argument(
        "--query-tile",
        type=parse_dims,
        default=None,
        help="query tile in tile coords t,h,w (default 0,0,0, a corner)",
    )
    p.add_argument("--head", type=int, default=0, help="head of a per-head pattern (default 0)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("pattern.png"),
        help="PNG to write (default pattern.png)",
    )
    p.set_defaults(func=_show)


def _show(args) -> int:
    from hasten.attn.plot import draw_pattern  # matplotlib only when drawing

    layout = layout_from_args(args)
    pattern = pattern_from_args(args)
    path = draw_pattern(layout, pattern, args.output, head=args.head, query_tile=args.query_tile)
    density = pattern.density(layout)
    if isinstance(density, list):
        density = density[args.head]
    print(f"wrote {path} (density {density:.1%})")
    return 0


def add_attn_commands(sub) -> None:
    from hasten.attn import bench

    attn = sub.add_parser("attn", help="sparse 3D attention: show, backends, bench")
    cmds = attn.add_subparsers(dest="attn_command", required=True, metavar="SUBCOMMAND")
    add_show_command(cmds)
    bench.add_bench_command(cmds)
    bench.add_backends_command(cmds)
