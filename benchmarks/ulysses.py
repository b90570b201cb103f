"""Ulysses sequence parallelism: one denoising step of full-size HunyuanVideo on 1..P GPUs.

    for P in 1 2 4; do
      HASTEN_COMMIT=<sha> torchrun --nproc-per-node $P benchmarks/ulysses.py --out $OUT
    done
    torchrun --nproc-per-node 2 benchmarks/ulysses.py --quick --device cpu --out /tmp/u  # smoke

Every rank builds the full-size HunyuanVideo transformer (its real config, random bf16
weights, as in ``video_e2e.py``) with the same inputs at 720p x 117 frames (30x48x80
tokens + 256 text), enables the attention of each configuration, shards the sequence with
:func:`hasten.parallel.sequence_parallel_transformer` (one process: the plain model, the
baseline of the speed-up) and times one forward: 1 warm-up, then ``--repeats`` runs; the
slowest rank sets each time. ``--what attention`` times one Ulysses attention call of that
shape instead (the two all-to-alls and the rank's heads). Rank 0 writes
``ulysses-<what>-<card>-w<P>.json``; once the one-process file is in the same folder it
adds the speed-up over it and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

try:
    import hasten  # noqa: F401
except ImportError:  # a bare copy of the tree (the GPU machine): use the source directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hasten.attn import Dense, SlidingTile, VideoLayout
from hasten.attn.bench import card_slug, env_line, environment, write_json
from hasten.parallel import ShardPlan, sequence_parallel_transformer, ulysses_attention
from hasten.video import (
    DenseStrategy,
    SlidingTileStrategy,
    disable_sparse_attention,
    enable_sparse_attention,
)
from hasten.video.fullsize import FULL, QUICK, build, inputs

CONFIGS = ("dense", "sta-333")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> dict:
    """1 warm-up and ``repeats`` runs; each time is the slowest rank's."""
    times = []
    for i in range(repeats + 1):  # the first call compiles kernels and warms the caches
        dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if i:
            times.append(float(t))
    return {"median_s": statistics.median(times), "times_s": times}


def time_transformer(case, configs, device, dtype, repeats, backend) -> list[dict]:
    world = dist.get_world_size()
    model = build(case, device, dtype)
    x = inputs(case, model, device, dtype)
    strategies = {
        "dense": DenseStrategy(tile=case.tile),
        "sta-333": SlidingTileStrategy(window=(3, 3, 3), tile=case.tile),
    }
    rows = []
    for config in configs:
        enable_sparse_attention(model, strategies[config], backend=backend)
        sp = sequence_parallel_transformer(model) if world > 1 else None

        def step():
            with torch.no_grad():
                return model(**x).sample

        row = {"what": "transformer", "model": case.name, "config": config, "world_size": world}
        rows.append({**row, **timed(step, device, repeats)})
        if sp is not None:
            sp.remove()
        disable_sparse_attention(model)
    return rows


def time_attention(case, device, dtype, repeats, backend, heads=24, head_dim=128) -> list[dict]:
    world, rank = dist.get_world_size(), dist.get_rank()
    layout = VideoLayout(case.canvas, case.tile, case.text_tokens)
    plan = ShardPlan(layout, world)
    shape = (1, heads, plan.sizes[rank], head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    rows = []
    for config, pattern in (("dense", Dense()), ("sta-333", SlidingTile((3, 3, 3)))):

        def call(pattern=pattern):
            return ulysses_attention(q, k, v, layout, pattern, plan=plan, backend=backend)

        row = {"what": "attention", "model": case.name, "config": config, "world_size": world}
        rows.append({**row, **timed(call, device, repeats), "sizes": plan.sizes})
    return rows


def add_speedups(rows: list[dict], baseline: list[dict]) -> None:
    one = {r["config"]: r["median_s"] for r in baseline}
    for r in rows:
        if r["config"] in one:
            r["speedup_vs_1"] = one[r["config"]] / r["median_s"]
            r["efficiency"] = r["speedup_vs_1"] / r["world_size"]


def format_table(rows: list[dict]) -> str:
    lines = ["| what | config | ranks | s / call | x one process |", "|---|---|---|---|---|"]
    for r in rows:
        x = f"{r['speedup_vs_1']:.2f}" if "speedup_vs_1" in r else ""
        lines.append(
            f"| {r['what']} | {r['config']} | {r['world_size']} | {r['median_s']:.3f} | {x} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", choices=("transformer", "attention"), default="transformer")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma separated")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after 1 warm-up")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto", help="sparse backend (default auto)")
    p.add_argument("--quick", action="store_true", help="a tiny HunyuanVideo (CPU smoke run)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {list(CONFIGS)}")
    if "RANK" not in os.environ:
        p.error("launch with torchrun, e.g. torchrun --nproc-per-node 2 benchmarks/ulysses.py")
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    case = QUICK["hunyuanvideo"] if args.quick else FULL["hunyuanvideo"]
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.what == "transformer":
        rows = time_transformer(case, configs, device, dtype, args.repeats, args.backend)
    else:
        rows = time_attention(case, device, dtype, args.repeats, args.backend)
    if rank == 0:
        env = environment(device)
        slug = "cpu-quick" if args.quick else card_slug(device)
        base = args.out / f"ulysses-{args.what}-{slug}-w1.json"
        if world == 1:
            add_speedups(rows, rows)
        elif base.exists():
            add_speedups(rows, json.loads(base.read_text())["rows"])
        write_json(args.out / f"ulysses-{args.what}-{slug}-w{world}.json", env, rows)
        print(env_line(env))
        print(format_table(rows), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
