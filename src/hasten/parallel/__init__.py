"""Sequence parallelism for video DiTs: tile-aligned shards and Ulysses all-to-all attention."""

from hasten.parallel.apply import SequenceParallel, sequence_parallel
from hasten.parallel.shard import ShardPlan
from hasten.parallel.ulysses import UlyssesAttention, ulysses_attention

__all__ = [
    "SequenceParallel",
    "ShardPlan",
    "TransformerParallel",
    "UlyssesAttention",
    "sequence_parallel",
    "sequence_parallel_transformer",
    "ulysses_attention",
]


def __getattr__(name: str):
    # The diffusers side imports diffusers: only when it is asked for.
    if name in ("TransformerParallel", "sequence_parallel_transformer"):
        from hasten.parallel import video

        return getattr(video, name)
    raise AttributeError(f"module 'hasten.parallel' has no attribute {name!r}")
