"""Sparse 3D attention patterns as pure predicates on tile and frame coordinates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from hasten.attn.layout import Coords, Dims, VideoLayout


class Pattern:
    """A video attention pattern: which video key tokens each video query keeps.

    Subclasses implement :meth:`keep_video`, a pure predicate on coordinates. The rules
    for text tokens are the same for every pattern and live here: video queries keep
    their pattern plus every text key; text queries keep every key. Key padding (text
    shorter than the layout's ``text_tokens``) is applied by the callers that know the
    per-sample lengths.
    """

    #: Number of heads the pattern distinguishes; ``None`` means one rule for all heads.
    heads: int | None = None
    #: Whether the rule looks at latent frames (finer than tiles) or only at tile coordinates.
    frame_level: bool = False

    def validate(self, layout: VideoLayout) -> None:
        """Raise ``ValueError`` if the pattern cannot be used with ``layout``."""

    def keep_video(self, q: Coords, k: Coords, layout: VideoLayout) -> torch.Tensor:
        """``[H or 1, len(q), len(k)]`` bool: video query ``q`` keeps video key ``k``."""
        raise NotImplementedError

    def keep(self, q: Coords, k: Coords, layout: VideoLayout) -> torch.Tensor:
        """``[H or 1, len(q), len(k)]`` bool over any tokens, text rules included."""
        video = self.keep_video(q, k, layout)
        return video | q.text[None, :, None] | k.text[None, None, :]

    def mask(self, layout: VideoLayout) -> torch.Tensor:
        """Token-level mask in tile-major order: ``[S, S]``, or ``[H, S, S]`` per head.

        Built token by token from the predicate: this is the test oracle, O(S^2) memory.
        """
        self.validate(layout)
        coords = layout.token_coords()
        m = self.keep(coords, coords, layout)
        return m[0] if self.heads is None else m

    def density(self, layout: VideoLayout) -> float | list[float]:
        """Fraction of (query, key) pairs kept, over the whole sequence (text included).

        Counted on cells (a tile's slab of one frame), so it is cheap at full size.
        """
        from hasten.attn.block_table import cells

        self.validate(layout)
        c = cells(layout, self.frame_level)
        size = c.size.to(torch.float64)
        kept = self.keep(c.coords, c.coords, layout)
        frac = [float(size @ h.to(torch.float64) @ size) / layout.seq_len**2 for h in kept]
        return frac[0] if self.heads is None else frac

    def sparsity(self, layout: VideoLayout) -> float | list[float]:
        d = self.density(layout)
        return 1.0 - d if isinstance(d, float) else [1.0 - x for x in d]

    def describe(self) -> str:
        return repr(self)

    def select_heads(self, start: int, stop: int) -> Pattern:
        """The pattern of heads ``start:stop`` only (sequence parallelism splits heads).

        A pattern with one rule for all heads is returned as it is.
        """
        if self.heads is None:
            return self
        if not 0 <= start < stop <= self.heads:
            raise ValueError(f"heads {start}:{stop} are outside the pattern's {self.heads} heads")
        return self.pick_heads(range(start, stop))

    def pick_heads(self, heads: Sequence[int]) -> Pattern:
        """The per-head pattern of these heads, in this order."""
        if self.heads is None:
            return self
        bad = [h for h in heads if not 0 <= h < self.heads]
        if bad or not heads:
            raise ValueError(f"heads {list(heads)} must be a non-empty list in 0..{self.heads - 1}")
        return self._with_heads(list(heads))

    def head_rules(self) -> tuple[Pattern, ...] | None:
        """Per head, its rule as a one-rule pattern; ``None`` when one rule covers all heads."""
        if self.heads is None:
            return None
        return tuple(self._with_heads([h]).single() for h in range(self.heads))

    def single(self) -> Pattern:
        """A one-head per-head pattern as the equivalent one-rule pattern."""
        return self

    def _with_heads(self, heads: list[int]) -> Pattern:
        raise NotImplementedError(f"{type(self).__name__} has per-head rules but no slicing")


@dataclass(frozen=True)
class Dense(Pattern):
    """Every query keeps every key (the baseline)."""

    def keep_video(self, q: Coords, k: Coords, layout: VideoLayout) -> torch.Tensor:
        return torch.ones(1, len(q), len(k), dtype=torch.bool)


def _window_tuple(w, where: str) -> Dims:
    try:
        dims = tuple(int(x) for x in w)
    except TypeError:
        raise TypeError(f"{where}: a window is three ints (wt, wh, ww), got {w!r}") from None
    if len(dims) != 3 or any(d < 1 for d in dims):
        raise ValueError(f"{where}: a window is three positive ints (wt, wh, ww), got {w!r}")
    return dims  # type: ignore[return-value]


@dataclass(frozen=True)
class SlidingTile(Pattern):
    """Sliding Tile Attention (STA): a 3D window of tiles around each query tile.

    ``window = (wt, wh, ww)`` is counted in tiles, one for all heads or a list with one
    per head. A query tile at tile coords ``q`` keeps key tile ``k`` iff in every dim
    ``|k - c| <= w // 2`` with centre ``c = clamp(q, w // 2, n - 1 - w // 2)`` and ``n``
    tiles along that dim: the window shifts inward at the borders, so every query tile
    keeps the same number of tiles. A window at least the grid extent keeps the whole dim.
    Windows smaller than the grid must be odd (a centred window).
    """

    window: Dims | Sequence[Dims]
    windows: tuple[Dims, ...] = field(init=False, repr=False)
    heads: int | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        w = self.window
        per_head = isinstance(w, Sequence) and len(w) > 0 and isinstance(w[0], Sequence)
        if per_head:
            windows = tuple(_window_tuple(x, f"window[{i}]") for i, x in enumerate(w))
        else:
            windows = (_window_tuple(w, "window"),)
        object.__setattr__(self, "windows", windows)
        object.__setattr__(self, "heads", len(windows) if per_head else None)
        object.__setattr__(self, "window", windows if per_head else windows[0])

    def validate(self, layout: VideoLayout) -> None:
        grid = layout.grid
        for i, win in enumerate(self.windows):
            for name, w, n in zip("thw", win, grid, strict=True):
                if w < n and w % 2 == 0:
                    where = f"window[{i}]" if self.heads else "window"
                    fixes = (w - 1, w + 1) if w + 1 < n else (w - 1, n)
                    raise ValueError(
                        f"{where} = {win}: {name}-extent {w} is even and smaller than the "
                        f"tile grid ({n} tiles along {name} for {layout}); use an odd window "
                        f"such as {fixes[0]} or {fixes[1]}, or >= {n} for the full extent"
                    )

    def keep_video(self, q: Coords, k: Coords, layout: VideoLayout) -> torch.Tensor:
        # The rule is separable: a [H, n, n] table per axis, gathered at the coordinates.
        out = None
        for d, table in enumerate(self.axis_tables(layout)):
            keep_d = table[:, q.tile[:, d]][:, :, k.tile[:, d]]
            out = keep_d if out is None else out & keep_d
        return out

    def _with_heads(self, heads: list[int]) -> SlidingTile:
        return SlidingTile([self.windows[h] for h in heads])

    def single(self) -> SlidingTile:
        return self if self.heads != 1 else SlidingTile(self.windows[0])

    def axis_tables(self, layout: VideoLayout) -> list[torch.Tensor]:
        """Per axis, ``[H or 1, n, n]`` bool: query tile index keeps key tile index."""
        tables = []
        for d, n in enumerate(layout.grid):
            w = torch.tensor([min(win[d], n) for win in self.windows])[:, None, None]
            # For a full even window (w == n even) the halves differ: n//2 below, n//2 - 1 above.
            lo, hi = w // 2, w - 1 - w // 2
            qi, ki = torch.arange(n)[None, :, None], torch.arange(n)[None, None, :]
            centre = torch.minimum(torch.maximum(qi, lo), n - 1 - hi)
            tables.append((ki - centre >= -lo) & (ki - centre <= hi))
        return tables

    def kept_tiles(self, layout: VideoLayout) -> list[int]:
        """Key tiles each query tile keeps (the same for every query tile), per head."""
        grid = torch.tensor(layout.grid)
        return [math.prod(w) for w in torch.minimum(torch.tensor(self.windows), grid).tolist()]


@dataclass(frozen=True)
class FrameTiles(Pattern):
    """Efficient-vDiT's ``k:(T-k)`` attention tile pattern, on latent frames.

    Query frame ``i`` keeps key frame ``j`` iff ``i == j`` (own frame), ``j < k`` (the
    first ``k`` frames are global reference keys) or ``i < k`` (reference frames attend
    to everything). ``global_frames`` is one ``k`` or a list with one per head. The
    pattern's cost grows linearly with the number of frames for a fixed ``k``.
    """

    global_frames: int | Sequence[int] = 1
    ks: tuple[int, ...] = field(init=False, repr=False)
    heads: int | None = field(init=False, repr=False)
    frame_level: bool = field(init=False, repr=False, default=True)

    def __post_init__(self) -> None:
        k = self.global_frames
        per_head = isinstance(k, Sequence)
        ks = tuple(int(x) for x in k) if per_head else (int(k),)  # type: ignore[union-attr]
        if not ks or any(x < 0 for x in ks):
            raise ValueError(f"global_frames must be >= 0 (one or one per head), got {k!r}")
        object.__setattr__(self, "ks", ks)
        object.__setattr__(self, "heads", len(ks) if per_head else None)
        object.__setattr__(self, "global_frames", ks if per_head else ks[0])  # hashable

    def validate(self, layout: VideoLayout) -> None:
        T = layout.canvas[0]
        bad = [x for x in self.ks if x > T]
        if bad:
            raise ValueError(
                f"global_frames {bad} exceed the {T} latent frames of {layout}; "
                f"use 0..{T} (counted in latent frames, not video frames)"
            )

    def _with_heads(self, heads: list[int]) -> FrameTiles:
        return FrameTiles([self.ks[h] for h in heads])

    def single(self) -> FrameTiles:
        return self if self.heads != 1 else FrameTiles(self.ks[0])

    def keep_video(self, q: Coords, k: Coords, layout: VideoLayout) -> torch.Tensor:
        g = torch.tensor(self.ks)[:, None, None]
        fq, fk = q.frame[None, :, None], k.frame[None, None, :]
        return (fq == fk) | (fk < g) | (fq < g)
