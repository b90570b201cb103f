"""Token geometry of a video DiT: the exact raster <-> tile-major permutation."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

Dims = tuple[int, int, int]


def _as_dims(value, name: str) -> Dims:
    dims = tuple(int(v) for v in value)
    if len(dims) != 3 or any(d < 1 for d in dims):
        raise ValueError(f"{name} must be three positive ints (t, h, w), got {tuple(value)!r}")
    return dims  # type: ignore[return-value]


def _edge_sizes(extent: int, tile: int) -> torch.Tensor:
    """Token count of each tile along one dim; the last one is short when tile does not divide."""
    n = math.ceil(extent / tile)
    sizes = torch.full((n,), tile, dtype=torch.long)
    sizes[-1] = extent - tile * (n - 1)
    return sizes


@dataclass(frozen=True)
class Coords:
    """Coordinates of a set of tokens (or cells of tokens) that patterns decide on.

    ``tile`` is ``[N, 3]`` tile-grid coordinates, ``frame`` the latent frame ``[N]`` and
    ``text`` marks text tokens ``[N]`` (their tile and frame are meaningless, set to 0).
    """

    tile: torch.Tensor
    frame: torch.Tensor
    text: torch.Tensor

    def __len__(self) -> int:
        return self.frame.shape[0]


@dataclass(frozen=True)
class VideoLayout:
    """Where each token of a video DiT's attention sequence sits.

    The video part is a ``canvas = (T, H, W)`` latent in frame-major raster order, cut into
    ``tile = (t, h, w)`` boxes. Tile-major order lists tiles in raster order of the tile grid
    and the tokens of each tile in raster order inside it.

    Partial edge tiles: when ``tile`` does not divide ``canvas``, the last tile along a dim
    is short (e.g. 21 frames with t=6 gives tiles of 6, 6, 6, 3 frames). Such tiles are
    stored *compactly*: no padding is inserted, so the tile-major sequence has exactly the
    raster sequence's length and the permutation is a bijection. Patterns are defined on
    tile coordinates, so a short tile is kept or dropped as a whole like any other; kernels
    whose blocks straddle two tiles of different fate mask those blocks element-wise (see
    ``block_table``).

    ``text_tokens`` text tokens sit after the video (``text_first=False``, HunyuanVideo) or
    before it (``text_first=True``, CogVideoX) and are never permuted.
    """

    canvas: Dims
    tile: Dims = (6, 8, 8)
    text_tokens: int = 0
    text_first: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "canvas", _as_dims(self.canvas, "canvas"))
        object.__setattr__(self, "tile", _as_dims(self.tile, "tile"))
        for name, c, t in zip("THW", self.canvas, self.tile, strict=True):
            if t > c:
                fit = tuple(min(a, b) for a, b in zip(self.tile, self.canvas, strict=True))
                raise ValueError(
                    f"tile {self.tile} is larger than canvas {self.canvas} along {name} "
                    f"({t} > {c}); use a tile no larger than the canvas, e.g. {fit}"
                )
        if int(self.text_tokens) < 0:
            raise ValueError(f"text_tokens must be >= 0, got {self.text_tokens}")
        object.__setattr__(self, "text_tokens", int(self.text_tokens))

    # ---- sizes -------------------------------------------------------------------------
    @property
    def grid(self) -> Dims:
        """Number of tiles along (t, h, w), counting short edge tiles."""
        return tuple(math.ceil(c / t) for c, t in zip(self.canvas, self.tile, strict=True))  # type: ignore[return-value]

    @property
    def num_tiles(self) -> int:
        return math.prod(self.grid)

    @property
    def video_tokens(self) -> int:
        return math.prod(self.canvas)

    @property
    def seq_len(self) -> int:
        return self.video_tokens + self.text_tokens

    @property
    def divisible(self) -> bool:
        return all(c % t == 0 for c, t in zip(self.canvas, self.tile, strict=True))

    @property
    def video_slice(self) -> slice:
        start = self.text_tokens if self.text_first else 0
        return slice(start, start + self.video_tokens)

    @property
    def text_slice(self) -> slice:
        start = 0 if self.text_first else self.video_tokens
        return slice(start, start + self.text_tokens)

    def __str__(self) -> str:
        text = f" + {self.text_tokens} text {'first' if self.text_first else 'last'}"
        return (
            f"canvas {'x'.join(map(str, self.canvas))}, tile {'x'.join(map(str, self.tile))}"
            f" (grid {'x'.join(map(str, self.grid))}){text if self.text_tokens else ''}"
        )

    # ---- the permutation ---------------------------------------------------------------
    def raster_to_tile_index(self) -> torch.Tensor:
        """``pos[i]``: tile-major position of the raster video token ``i`` (a permutation)."""
        return _raster_to_tile(self.canvas, self.tile).clone()  # the cache must stay intact

    def tile_to_raster_index(self) -> torch.Tensor:
        """``src[j]``: raster index of the video token at tile-major position ``j``."""
        return _tile_to_raster(self.canvas, self.tile).clone()

    def to_tiles(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Reorder ``x`` (raster video tokens, plus text) along ``dim`` into tile-major order."""
        return self._gather(x, dim, _tile_to_raster(self.canvas, self.tile))

    def from_tiles(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Inverse of :meth:`to_tiles`."""
        return self._gather(x, dim, _raster_to_tile(self.canvas, self.tile))

    def _gather(self, x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        dim = dim % x.dim()
        if x.shape[dim] != self.seq_len:
            raise ValueError(
                f"dim {dim} of the input has {x.shape[dim]} tokens but the layout ({self}) has "
                f"{self.seq_len} = {self.video_tokens} video + {self.text_tokens} text; pass "
                f"dim= to name the sequence dim, or a layout that matches the input"
            )
        index = index.to(x.device)
        if self.text_tokens:
            text = torch.arange(self.text_tokens, device=x.device)
            if self.text_first:
                index = torch.cat([text, index + self.text_tokens])
            else:
                index = torch.cat([index, text + self.video_tokens])
        return x.index_select(dim, index)

    def check_text_lengths(self, text_lengths, batch: int) -> torch.Tensor | None:
        """Validate per-sample valid text lengths; ``None`` means all text tokens are valid."""
        if text_lengths is None:
            return None
        lengths = torch.as_tensor(text_lengths).to(torch.long).reshape(-1).cpu()
        if lengths.numel() != batch:
            raise ValueError(
                f"text_lengths has {lengths.numel()} entries for a batch of {batch}; "
                f"pass one valid text length per sample"
            )
        bad = lengths[(lengths < 0) | (lengths > self.text_tokens)]
        if bad.numel():
            raise ValueError(
                f"text_lengths {bad.tolist()} are outside 0..{self.text_tokens} "
                f"(the layout's text_tokens); each is the number of valid (unpadded) text tokens"
            )
        return lengths

    # ---- coordinates of tokens in tile-major order --------------------------------------
    def token_coords(self) -> Coords:
        """Coordinates of every token of the sequence in tile-major order (the oracle's view)."""
        return _token_coords(self)

    def tile_sizes(self) -> torch.Tensor:
        """``[grid_t, grid_h, grid_w]`` token counts of each tile."""
        st, sh, sw = (_edge_sizes(c, t) for c, t in zip(self.canvas, self.tile, strict=True))
        return st[:, None, None] * sh[None, :, None] * sw[None, None, :]


@functools.lru_cache(maxsize=32)
def _raster_to_tile(canvas: Dims, tile: Dims) -> torch.Tensor:
    T, H, W = canvas
    tt, th, tw = tile
    t = torch.arange(T)[:, None, None]
    h = torch.arange(H)[None, :, None]
    w = torch.arange(W)[None, None, :]
    # Extents of the tile each token falls in (short at the far edges).
    lt = torch.clamp(T - (t // tt) * tt, max=tt)
    lh = torch.clamp(H - (h // th) * th, max=th)
    lw = torch.clamp(W - (w // tw) * tw, max=tw)
    # Tiles with equal tile-t form one contiguous slab of lt*H*W tokens; inside it the rows
    # of tiles with equal tile-h are lt*lh*W tokens; inside that each tile is lt*lh*lw.
    start = (t // tt) * tt * H * W + lt * (h // th) * th * W + lt * lh * (w // tw) * tw
    local = ((t % tt) * lh + (h % th)) * lw + (w % tw)
    return (start + local).reshape(-1)


@functools.lru_cache(maxsize=32)
def _tile_to_raster(canvas: Dims, tile: Dims) -> torch.Tensor:
    pos = _raster_to_tile(canvas, tile)
    src = torch.empty_like(pos)
    src[pos] = torch.arange(pos.numel())
    return src


def _token_coords(layout: VideoLayout) -> Coords:
    _, H, W = layout.canvas
    src = _tile_to_raster(layout.canvas, layout.tile)
    t, h, w = src // (H * W), (src // W) % H, src % W
    tile = torch.stack([t // layout.tile[0], h // layout.tile[1], w // layout.tile[2]], dim=1)
    frame = t
    text = torch.zeros(layout.video_tokens, dtype=torch.bool)
    n = layout.text_tokens
    if n:
        pad = (torch.zeros(n, 3, dtype=torch.long), torch.zeros(n, dtype=torch.long))
        first = layout.text_first
        tile = torch.cat([pad[0], tile] if first else [tile, pad[0]])
        frame = torch.cat([pad[1], frame] if first else [frame, pad[1]])
        flag = torch.ones(n, dtype=torch.bool)
        text = torch.cat([flag, text] if first else [text, flag])
    return Coords(tile=tile, frame=frame, text=text)
