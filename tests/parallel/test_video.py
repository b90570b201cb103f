"""Sequence-parallel diffusers transformers across real gloo processes equal one process."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("diffusers")

from hasten.parallel import sequence_parallel_transformer
from hasten.video import (
    DenseStrategy,
    PerHeadStrategy,
    SlidingTileStrategy,
    enable_sparse_attention,
    sparse_runtime,
)
from hasten.video.tiny import MODELS, tiny_transformer, transformer_inputs
from tests.parallel.test_ulysses import _free_port

# Tile 1x2x2 does not divide the 5 rows: ragged edge tiles land in the shards.
CANVAS = (3, 5, 6)
TILE = (1, 2, 2)
# HunyuanVideo pads its text (the joint sequence is [video, text]); CogVideoX puts the text
# first; Wan's self-attention has none.
TEXT_LENGTHS = {"hunyuanvideo": [5, 8], "wan": None, "cogvideox": None}
STRATEGIES = {
    "dense": None,
    "dense-strategy": DenseStrategy(),
    "sta": SlidingTileStrategy(window=(1, 1, 3), tile=TILE),
    # Each head its own window, so a head's window reaching another rank's head shows.
    "per-head": PerHeadStrategy(
        tile=TILE, windows=((((1, 1, 1), (3, 3, 1)), ((1, 3, 3), (3, 1, 1))),)
    ),
}


def _inputs(model, tr):
    return transformer_inputs(
        model, tr, CANVAS, batch=2, text_lengths=TEXT_LENGTHS[model], dtype=torch.float64
    )


def _worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for model in MODELS:
            for name, strategy in STRATEGIES.items():
                _check(model, name, strategy)
        _check_refusals(world)
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def _check(model, name, strategy):
    tr = tiny_transformer(model, heads=2, seed=0).double().eval()
    if strategy is not None:
        enable_sparse_attention(tr, strategy, backend="reference")
    ref = tr(**_inputs(model, tr)).sample
    sp = sequence_parallel_transformer(tr)
    out = tr(**_inputs(model, tr)).sample
    # Per token the same arithmetic, per head the same attention: equal to rounding.
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12, msg=f"{model} {name}")
    runtime = sparse_runtime(tr)
    assert runtime is not None and runtime.exchange is sp.exchange
    sp.remove()
    assert runtime.exchange is None
    # Without a strategy of its own, removing it leaves the model as it was.
    assert (sparse_runtime(tr) is None) == (strategy is None), f"{model} {name}"
    torch.testing.assert_close(tr(**_inputs(model, tr)).sample, ref, rtol=0, atol=0)


def _check_refusals(world):
    tr = tiny_transformer("wan", heads=3, seed=0)
    with pytest.raises(ValueError, match=rf"3 heads do not divide among {world} ranks.*\[1, 3\]"):
        sequence_parallel_transformer(tr)
    assert sparse_runtime(tr) is None, "a refused call left sparse attention enabled"
    tr = tiny_transformer("wan", heads=2, seed=0)
    sequence_parallel_transformer(tr)
    with pytest.raises(RuntimeError, match="sequence-parallel already"):
        sequence_parallel_transformer(tr)


def test_sharded_transformers_equal_one_process():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2)


def test_needs_a_process_group():
    with pytest.raises(RuntimeError, match="torchrun"):
        sequence_parallel_transformer(tiny_transformer("wan", heads=2))
