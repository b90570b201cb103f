"""Draw a pattern on a small canvas: token mask, block table and one query tile's keys."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.colors import LinearSegmentedColormap, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from hasten.attn.block_table import FULL, PARTIAL, SKIP, block_table
from hasten.attn.layout import Dims, VideoLayout
from hasten.attn.masks import attention_mask

#: Longest sequence drawn: the oracle mask is dense, S x S booleans per head.
MAX_TOKENS = 8192
#: Cap on the oracle's [heads, S, S] booleans, so per-head patterns stay in memory too.
MAX_MASK_ELEMENTS = 1 << 28
#: Mask pixels per side; larger masks are averaged down (mixed pixels get in-between shades).
MAX_PIXELS = 1024
#: Most (h, w) panels in the query view; longer videos are grouped by tile-t slices.
MAX_PANELS = 12

# One colour per block state, reused by the mask (dropped / kept) so the panels read alike.
COLOURS = {SKIP: "#f1f1f1", PARTIAL: "#f4a261", FULL: "#264653"}
STATE_CMAP = ListedColormap([COLOURS[SKIP], COLOURS[PARTIAL], COLOURS[FULL]])
MASK_CMAP = LinearSegmentedColormap.from_list("mask", [COLOURS[SKIP], COLOURS[FULL]])
TEXT_LINE = {"color": "#e63946", "linewidth": 1.0}
TILE_LINE = {"color": "#8d99ae", "linewidth": 0.4}


def draw_pattern(
    layout: VideoLayout,
    pattern,
    path: str | Path,
    *,
    head: int = 0,
    query_tile: Dims | None = None,
    q_block: int | None = None,
    kv_block: int | None = None,
    text_lengths=None,
) -> Path:
    """Render ``pattern`` on ``layout`` to a PNG at ``path`` and return the path.

    Three panels: (a) the oracle token mask in tile-major order, (b) the block table a
    kernel would run, as skip / partial / full, and (c) the key tokens that one query tile
    keeps, per latent frame on the (h, w) plane. ``head`` picks the head of a per-head
    pattern. ``query_tile`` (tile coords) defaults to the corner (0, 0, 0), where a sliding
    window is shifted inward. Block sizes default to the tile volume (a multiple of it on
    long sequences), so on divisible canvases blocks line up with tiles. ``text_lengths``
    is the drawn sample's number of valid text tokens (an int or a one-element sequence).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"draw_pattern writes PNG files; got {str(path)!r}, use a .png name")
    _check_size(layout, pattern)
    head = _check_head(pattern, head)
    query_tile = _check_query_tile(layout, query_tile)
    lengths = layout.check_text_lengths(text_lengths, batch=1)
    default_block = _default_block(layout)

    mask = attention_mask(layout, pattern, lengths)[0]
    mask = mask[head if mask.shape[0] > 1 else 0]
    table = block_table(
        layout,
        pattern,
        q_block=default_block if q_block is None else q_block,
        kv_block=default_block if kv_block is None else kv_block,
        text_lengths=lengths,
    )

    # The query view's height follows its panels' (h, w) aspect so no band is left empty.
    groups = _frame_groups(layout)
    cols = min(len(groups), 6)
    row_h = min(3.0, 12 / cols * layout.canvas[1] / layout.canvas[2])
    bottom_h = math.ceil(len(groups) / cols) * (row_h + 0.3) + 0.5
    fig = Figure(figsize=(12, 6.2 + bottom_h), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[6.2, bottom_h])
    ax_mask, ax_table = top.subplots(1, 2)
    _draw_mask(ax_mask, layout, mask)
    _draw_table(ax_table, layout, table, head)
    _draw_query_tile(bottom, layout, mask, query_tile, groups, cols)
    fig.suptitle(_title(layout, pattern, head, lengths), fontsize=11)
    fig.savefig(path, format="png", dpi=110)
    return path


# ---- input checks --------------------------------------------------------------------------
def _check_size(layout: VideoLayout, pattern) -> None:
    S, heads = layout.seq_len, pattern.heads or 1
    if S <= MAX_TOKENS and heads * S * S <= MAX_MASK_ELEMENTS:
        return
    why = f"{S} tokens" if S > MAX_TOKENS else f"{heads} heads x {S}^2 mask entries"
    raise ValueError(
        f"{layout} is too big to draw ({why}; the drawing builds the dense token mask, up to "
        f"{MAX_TOKENS} tokens and {MAX_MASK_ELEMENTS} entries); {_smaller_canvas(layout)}"
    )


def _smaller_canvas(layout: VideoLayout) -> str:
    """Suggest a canvas with the same tile grid and latent frames, so patterns look alike."""
    canvas = (layout.canvas[0], *layout.grid[1:])
    tile = (layout.tile[0], 1, 1)
    tokens = math.prod(canvas) + layout.text_tokens
    if tokens > MAX_TOKENS:
        return "use a smaller canvas, e.g. --canvas 8x12x16 --tile 2x2x2"
    return (
        f"use a smaller canvas, e.g. canvas {_dims(canvas)} with tile {_dims(tile)} "
        f"({tokens} tokens, the same {_dims(layout.grid)} tile grid and frames)"
    )


def _check_head(pattern, head: int) -> int:
    if isinstance(head, bool) or not isinstance(head, int):
        raise TypeError(f"head must be an int, got {head!r}")
    if pattern.heads is None and head != 0:
        raise ValueError(f"{pattern!r} has one rule for all heads; pass head=0, got {head}")
    if pattern.heads is not None and not 0 <= head < pattern.heads:
        raise ValueError(
            f"head {head} is out of range for {pattern!r}, which has {pattern.heads} heads; "
            f"pass 0..{pattern.heads - 1}"
        )
    return head


def _check_query_tile(layout: VideoLayout, query_tile) -> Dims:
    if query_tile is None:
        return (0, 0, 0)
    q = tuple(int(x) for x in query_tile)
    if len(q) != 3 or not all(0 <= x < n for x, n in zip(q, layout.grid, strict=True)):
        last = tuple(n - 1 for n in layout.grid)
        raise ValueError(
            f"query_tile {tuple(query_tile)!r} is not a tile of {layout}; pass tile coords "
            f"(t, h, w) from (0, 0, 0) to {last}"
        )
    return q  # type: ignore[return-value]


def _default_block(layout: VideoLayout) -> int:
    """The tile volume, so on divisible canvases blocks line up with tiles and STA blocks
    come out full or skip; a multiple of it where that would give over 512 blocks a side."""
    volume = math.prod(layout.tile)
    return volume * math.ceil(layout.seq_len / (volume * 512))


# ---- panels --------------------------------------------------------------------------------
def _draw_mask(ax, layout: VideoLayout, mask: torch.Tensor) -> None:
    S = layout.seq_len
    ax.imshow(
        _downsample(mask).numpy(),
        cmap=MASK_CMAP,
        extent=(0, S, S, 0),
        interpolation="nearest",
        vmin=0,
        vmax=1,
    )
    # Tile lines only while there are few enough to tell apart.
    if layout.num_tiles <= 96:
        for x in _tile_edges(layout):
            ax.axhline(x, **TILE_LINE)
            ax.axvline(x, **TILE_LINE)
    _text_lines(ax, layout)
    kept = float(mask.float().mean())
    ax.set_title(f"(a) token mask, tile-major order ({kept:.1%} kept)", fontsize=10)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")


def _downsample(mask: torch.Tensor) -> torch.Tensor:
    """Float image of the mask, averaged down to at most MAX_PIXELS per side."""
    S = mask.shape[-1]
    f = math.ceil(S / MAX_PIXELS)
    if f == 1:
        return mask.float()
    n = math.ceil(S / f)
    padded = mask.new_zeros(n * f, n * f)
    padded[:S, :S] = mask
    return padded.view(n, f, n, f).sum((1, 3), dtype=torch.int32) / (f * f)


def _tile_edges(layout: VideoLayout) -> list[int]:
    """Tile-major positions where a new video tile starts (the first excluded)."""
    start = layout.video_slice.start
    ends = torch.cumsum(layout.tile_sizes().reshape(-1), 0)[:-1]
    return (ends + start).tolist()


def _text_lines(ax, layout: VideoLayout, q_unit: int = 1, kv_unit: int = 1) -> None:
    """Mark the video/text boundary; units are tokens per row and per column."""
    if not layout.text_tokens:
        return
    edge = layout.text_tokens if layout.text_first else layout.video_tokens
    ax.axhline(edge / q_unit, **TEXT_LINE)
    ax.axvline(edge / kv_unit, **TEXT_LINE)


def _draw_table(ax, layout: VideoLayout, table, head: int) -> None:
    state = table.state[0, head if table.state.shape[1] > 1 else 0]
    nq, nk = state.shape
    ax.imshow(
        state.numpy(),
        cmap=STATE_CMAP,
        vmin=SKIP,
        vmax=FULL,
        interpolation="nearest",
        extent=(0, nk, nq, 0),
    )
    # The boundary in block units: blocks straddling it come out partial.
    _text_lines(ax, layout, table.q_block, table.kv_block)
    counts = {s: int((state == s).sum()) for s in (SKIP, PARTIAL, FULL)}
    handles = [
        Patch(color=COLOURS[s], label=f"{name} ({counts[s]})")
        for s, name in ((SKIP, "skip"), (PARTIAL, "partial"), (FULL, "full"))
    ]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False
    )
    computed = float((state != SKIP).float().mean())
    ax.set_title(
        f"(b) block table, {table.q_block} x {table.kv_block} tokens "
        f"({computed:.1%} of blocks run)",
        fontsize=10,
    )
    ax.set_xlabel("kv block")
    ax.set_ylabel("query block")


def _draw_query_tile(fig, layout: VideoLayout, mask: torch.Tensor, q: Dims, groups, cols) -> None:
    state = _query_tile_state(layout, mask, q)
    T, H, W = layout.canvas
    video = state[layout.video_slice][layout.raster_to_tile_index()].view(T, H, W)
    rows = math.ceil(len(groups) / cols)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    q_frames = range(q[0] * layout.tile[0], min((q[0] + 1) * layout.tile[0], T))
    for ax, (f0, f1) in zip(axes, groups, strict=False):
        image = _combine(video[f0:f1])
        ax.imshow(image.numpy(), cmap=STATE_CMAP, vmin=SKIP, vmax=FULL, interpolation="nearest")
        _tile_grid(ax, layout)
        own = f0 < q_frames.stop and q_frames.start < f1
        _outline(ax, layout, q, solid=own)
        ax.set_title(f"t = {f0}" if f1 - f0 == 1 else f"t = {f0}..{f1 - 1}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(groups) :]:
        ax.axis("off")
    fig.suptitle(_query_title(layout, state, q), fontsize=10)


def _query_tile_state(layout: VideoLayout, mask: torch.Tensor, q: Dims) -> torch.Tensor:
    """Per key position: FULL if every query of tile ``q`` keeps it, PARTIAL if some do.

    Frame-level patterns give different rows to the frames of one tile, hence the split.
    """
    coords = layout.token_coords()
    rows = ~coords.text & (coords.tile == torch.tensor(q)).all(dim=1)
    sub = mask[rows]
    return torch.where(sub.all(0), FULL, torch.where(sub.any(0), PARTIAL, SKIP))


def _frame_groups(layout: VideoLayout) -> list[tuple[int, int]]:
    """Frame ranges drawn as one panel: single frames, or whole tile-t slices when long."""
    T = layout.canvas[0]
    if T <= MAX_PANELS:
        return [(f, f + 1) for f in range(T)]
    step = layout.tile[0] * math.ceil(layout.grid[0] / MAX_PANELS)
    return [(f, min(f + step, T)) for f in range(0, T, step)]


def _combine(frames: torch.Tensor) -> torch.Tensor:
    """Merge the states of several frames: FULL or SKIP only where all frames agree."""
    full = (frames == FULL).all(0)
    skip = (frames == SKIP).all(0)
    return torch.where(full, FULL, torch.where(skip, SKIP, PARTIAL))


def _tile_grid(ax, layout: VideoLayout) -> None:
    _, H, W = layout.canvas
    _, th, tw = layout.tile
    for y in range(th, H, th):
        ax.axhline(y - 0.5, **TILE_LINE)
    for x in range(tw, W, tw):
        ax.axvline(x - 0.5, **TILE_LINE)


def _outline(ax, layout: VideoLayout, q: Dims, *, solid: bool) -> None:
    """Box the query tile's (h, w) extent; dashed in frames outside the tile."""
    _, H, W = layout.canvas
    _, th, tw = layout.tile
    h0, w0 = q[1] * th, q[2] * tw
    h1, w1 = min(h0 + th, H), min(w0 + tw, W)
    box = Rectangle(
        (w0 - 0.5, h0 - 0.5),
        w1 - w0,
        h1 - h0,
        fill=False,
        edgecolor=TEXT_LINE["color"],
        linewidth=1.8 if solid else 1.0,
        linestyle="-" if solid else "--",
    )
    ax.add_patch(box)


# ---- titles --------------------------------------------------------------------------------
def _title(layout: VideoLayout, pattern, head: int, lengths: torch.Tensor | None) -> str:
    density = pattern.density(layout)
    which = ""
    if pattern.heads is not None:
        density, which = density[head], f", head {head} of {pattern.heads}"
    # The pattern's density counts every text key; say so when the drawing pads some out.
    padded = ""
    if lengths is not None:
        padded = f" with all {layout.text_tokens} text keys valid (drawn: {int(lengths[0])})"
    return f"{layout}\n{pattern!r}{which}: density {density:.1%}{padded}"


def _query_title(layout: VideoLayout, state: torch.Tensor, q: Dims) -> str:
    video = state[layout.video_slice]
    tiles = layout.token_coords().tile[layout.video_slice][video != SKIP]
    kept = len(torch.unique(tiles, dim=0)) if len(tiles) else 0
    text = ""
    if layout.text_tokens:
        n = int((state[layout.text_slice] == FULL).sum())
        text = f", plus {n} of {layout.text_tokens} text keys"
    return (
        f"(c) key tokens kept by query tile {q} (outlined): {kept} of {layout.num_tiles} "
        f"key tiles{text}; dark = every query of the tile, orange = some"
    )


def _dims(d) -> str:
    return "x".join(map(str, d))
