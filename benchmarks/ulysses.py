"""Ulysses sequence-parallel attention: per-call latency on 1..P GPUs (launch with torchrun).

    torchrun --nproc-per-node 4 benchmarks/ulysses.py --out results/ulysses-4.json
    torchrun --nproc-per-node 2 benchmarks/ulysses.py --quick --device cpu   # smoke run

Times one attention call of the HunyuanVideo 720p x 117f shape (30x48x80 latent, tiles
6x8x8, 256 text tokens, 24 heads, head dim 128, bf16) on every rank at once: the two
all-to-alls plus the sparse (or dense) attention of the rank's heads over the whole
sequence. Rank 0 prints a table and writes JSON. Run it at each world size (1, 2, 4) in
the same session to get the speed-up; the whole-transformer step is measured by the video
benchmark once the diffusers integration shards its blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from hasten.attn import Dense, SlidingTile, VideoLayout
from hasten.parallel import ShardPlan, ulysses_attention


@dataclass(frozen=True)
class Config:
    canvas: tuple[int, int, int] = (30, 48, 80)
    tile: tuple[int, int, int] = (6, 8, 8)
    text: int = 256
    heads: int = 24
    head_dim: int = 128
    repeats: int = 5
    device: str = "cuda"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_pattern(cfg: Config, pattern, name: str) -> dict:
    world, rank = dist.get_world_size(), dist.get_rank()
    layout = VideoLayout(cfg.canvas, cfg.tile, cfg.text)
    plan = ShardPlan(layout, world)
    dtype = torch.bfloat16 if cfg.device == "cuda" else torch.float32
    shape = (1, cfg.heads, plan.sizes[rank], cfg.head_dim)
    q, k, v = (torch.randn(shape, device=cfg.device, dtype=dtype) for _ in range(3))
    backend = "auto" if cfg.device == "cuda" else "reference"
    times = []
    for i in range(cfg.repeats + 1):  # the first call compiles and warms up
        dist.barrier()
        _sync(cfg.device)
        t0 = time.perf_counter()
        ulysses_attention(q, k, v, layout, pattern, plan=plan, backend=backend)
        _sync(cfg.device)
        if i:
            times.append(time.perf_counter() - t0)
    # The slowest rank sets the step time.
    t = torch.tensor([statistics.median(times)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return {"pattern": name, "world_size": world, "median_s": float(t), "sizes": plan.sizes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny shapes (a CPU smoke run)")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    cfg = Config(device=args.device)
    if args.quick:
        cfg = Config(
            canvas=(4, 8, 8),
            tile=(2, 4, 4),
            text=8,
            heads=4,
            head_dim=16,
            repeats=2,
            device=args.device,
        )
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    dist.init_process_group(backend)
    if cfg.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    rows = [
        time_pattern(cfg, Dense(), "dense"),
        time_pattern(cfg, SlidingTile((3, 3, 3)), "sta-333"),
    ]
    if dist.get_rank() == 0:
        card = torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu"
        report = {"config": asdict(cfg), "card": card, "torch": torch.__version__, "rows": rows}
        for r in rows:
            print(f"{r['pattern']:8s} world {r['world_size']}: {r['median_s'] * 1e3:9.2f} ms")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
