"""How a tile-major attention sequence is cut into per-rank shards along whole tiles."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from hasten.attn.layout import VideoLayout


@dataclass(frozen=True)
class ShardPlan:
    """Contiguous per-rank pieces of one layout's tile-major sequence, cut between tiles.

    Cuts fall only between whole tiles, so every rank holds complete tiles (a tile's tokens
    are never split across ranks) and the pieces are as even in tokens as whole tiles allow;
    on a ragged canvas short edge tiles make the pieces uneven, which the all-to-all handles
    with per-rank split sizes. Text tokens join the piece at their end of the sequence (the
    last rank for text after the video, the first for text before it).
    """

    layout: VideoLayout
    world_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, got {self.world_size!r}")
        if self.world_size > self.layout.num_tiles:
            raise ValueError(
                f"{self.world_size} ranks but {self.layout} has only {self.layout.num_tiles} "
                f"tiles; a rank needs at least one whole tile: use <= {self.layout.num_tiles} "
                f"ranks or smaller tiles"
            )

    @property
    def tile_cuts(self) -> list[int]:
        """``world_size + 1`` tile indices: rank ``r`` holds tiles ``cuts[r]:cuts[r+1]``."""
        sizes = self.layout.tile_sizes().flatten()
        ends = torch.cumsum(sizes, 0)
        total = int(ends[-1])
        cuts = [0]
        for r in range(1, self.world_size):
            # The tile boundary nearest the ideal token cut, past the previous cut, leaving
            # at least one tile for each rank still to come.
            ideal = total * r / self.world_size
            lo, hi = cuts[-1] + 1, self.layout.num_tiles - (self.world_size - r)
            best = min(range(lo, hi + 1), key=lambda t: abs(int(ends[t - 1]) - ideal))
            cuts.append(best)
        cuts.append(self.layout.num_tiles)
        return cuts

    @property
    def sizes(self) -> list[int]:
        """Tokens per rank, text included; they sum to ``layout.seq_len``."""
        ends = [0, *torch.cumsum(self.layout.tile_sizes().flatten(), 0).tolist()]
        cuts = self.tile_cuts
        video = [ends[b] - ends[a] for a, b in itertools.pairwise(cuts)]
        text = self.layout.text_tokens
        if self.layout.text_first:
            video[0] += text
        else:
            video[-1] += text
        return video

    @property
    def offsets(self) -> list[int]:
        """Start of each rank's piece in the full sequence, and its end last."""
        return [0, *itertools.accumulate(self.sizes)]

    def shard(self, x: torch.Tensor, rank: int, dim: int = -2) -> torch.Tensor:
        """Rank ``rank``'s piece of a full tile-major sequence ``x`` (a view, along ``dim``)."""
        self._check_rank(rank)
        if x.shape[dim] != self.layout.seq_len:
            raise ValueError(
                f"dim {dim} of x has {x.shape[dim]} tokens but the layout has "
                f"{self.layout.seq_len}; shard the full tile-major sequence"
            )
        lo, hi = self.offsets[rank], self.offsets[rank + 1]
        return x.narrow(dim, lo, hi - lo)

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1}")
