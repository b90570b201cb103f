"""Sparse attention inside diffusers' video DiTs: strategies, integration and calibration."""

from hasten.video.integrate import (
    disable_sparse_attention,
    enable_sparse_attention,
    sparse_runtime,
)
from hasten.video.presets import PRESETS
from hasten.video.runtime import SparseRuntime
from hasten.video.strategy import (
    SCHEMA,
    DenseStrategy,
    FrameTileStrategy,
    PerHeadStrategy,
    SlidingTileStrategy,
    Strategy,
    load_strategy,
)

__all__ = [
    "PRESETS",
    "SCHEMA",
    "DenseStrategy",
    "FrameTileStrategy",
    "PerHeadStrategy",
    "SlidingTileStrategy",
    "SparseRuntime",
    "Strategy",
    "disable_sparse_attention",
    "enable_sparse_attention",
    "load_strategy",
    "sparse_runtime",
]
