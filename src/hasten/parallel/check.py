"""``torchrun --nproc-per-node N -m hasten.parallel.check``: Ulysses against one process.

Every rank builds the same random problem, runs Ulysses attention on its shard and compares
its piece of the output with single-process attention; rank 0 prints the largest error.
Runs on CPU (gloo) or GPU (NCCL), so a cluster set-up can be checked before a long job.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from hasten.attn import SlidingTile, VideoLayout, sparse_attention
from hasten.attn.cli import parse_dims
from hasten.parallel.shard import ShardPlan
from hasten.parallel.ulysses import ulysses_attention


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hasten.parallel.check", description=__doc__)
    p.add_argument("--canvas", type=parse_dims, default=parse_dims("6x8x12"))
    p.add_argument("--tile", type=parse_dims, default=parse_dims("2x4x4"))
    p.add_argument("--text", type=int, default=16)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--window", type=parse_dims, default=parse_dims("3x1x3"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        rank, world = dist.get_rank(), dist.get_world_size()
        layout = VideoLayout(args.canvas, args.tile, args.text)
        pattern = SlidingTile(args.window)
        plan = ShardPlan(layout, world)
        g = torch.Generator().manual_seed(0)
        dtype = torch.float32
        q, k, v = (
            torch.randn(1, args.heads, layout.seq_len, 32, generator=g, dtype=dtype).to(args.device)
            for _ in range(3)
        )
        ref = sparse_attention(q, k, v, layout, pattern, backend="reference")
        out = ulysses_attention(
            *(plan.shard(t, rank) for t in (q, k, v)), layout, pattern, backend="reference"
        )
        err = torch.tensor([float((out - plan.shard(ref, rank)).abs().max())], device=args.device)
        dist.all_reduce(err, op=dist.ReduceOp.MAX)
        if rank == 0:
            print(
                f"ulysses on {world} ranks ({dist.get_backend()}), {layout}, {pattern}: "
                f"shards {plan.sizes} tokens, max |error| vs one process {float(err):.2e}"
            )
        return 0 if float(err) < 1e-4 else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
