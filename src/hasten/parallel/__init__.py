"""Sequence parallelism for video DiTs: tile-aligned shards and Ulysses all-to-all attention."""

from hasten.parallel.apply import SequenceParallel, sequence_parallel
from hasten.parallel.shard import ShardPlan
from hasten.parallel.ulysses import UlyssesAttention, ulysses_attention

__all__ = [
    "SequenceParallel",
    "ShardPlan",
    "UlyssesAttention",
    "sequence_parallel",
    "ulysses_attention",
]
