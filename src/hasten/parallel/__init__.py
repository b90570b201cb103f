"""Sequence parallelism for video DiTs: tile-aligned shards and Ulysses all-to-all attention."""

from hasten.parallel.shard import ShardPlan
from hasten.parallel.ulysses import UlyssesAttention, ulysses_attention

__all__ = ["ShardPlan", "UlyssesAttention", "ulysses_attention"]
