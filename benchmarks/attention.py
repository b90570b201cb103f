"""Sparse attention forward on one card: dense SDPA baselines beside every hasten backend.

Run on the GPU machine; about 2-4 minutes on an H100, mostly FlexAttention compiles and
dense SDPA at 115,200 tokens. A copy of the tree without ``.git`` records the commit only
if told (``HASTEN_COMMIT``):

    HASTEN_COMMIT=<sha> python benchmarks/attention.py --out $OUT

``--quick`` is a smoke run (one small shape); ``--device cpu --quick`` finishes in seconds.
Writes ``attention-<card>.json`` (``-quick`` added for smoke runs) after every row, so a run
cut short still leaves its rows, and prints the table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

try:
    import hasten  # noqa: F401
except ImportError:  # a bare copy of the tree (the GPU machine): use the source directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hasten.attn.bench import (
    QUICK_TIMING,
    BenchCase,
    Timing,
    card_slug,
    env_line,
    environment,
    format_table,
    run_cases,
    write_json,
)

WINDOWS = ((3, 3, 3), (3, 3, 5), (5, 5, 5), "full")

# HunyuanVideo 720p x 117 frames (the spec's reference shape), then Wan 720p x 81 frames,
# whose 21 x 45 latent the 6 x 8 x 8 tile does not divide (partial edge tiles).
GPU_SHAPES = (
    BenchCase("hunyuanvideo-720p-117f", (30, 48, 80), (6, 8, 8), heads=24, head_dim=128),
    BenchCase("wan-720p-81f", (21, 45, 80), (6, 8, 8), heads=24, head_dim=128),
)
GPU_QUICK = ((BenchCase("small-12x24x40", (12, 24, 40), (6, 8, 8)), ((3, 3, 3), "full")),)

# CPU: the same code paths (a ragged canvas, text tokens) at toy sizes.
_CPU = {"heads": 2, "head_dim": 32, "dtype": "fp32"}
CPU_SHAPES = (
    BenchCase("cpu-8x8x16", (8, 8, 16), (2, 2, 2), **_CPU),
    BenchCase("cpu-ragged-7x10x12+16", (7, 10, 12), (2, 4, 4), text_tokens=16, **_CPU),
)
CPU_QUICK = (
    (BenchCase("cpu-tiny-6x8x12", (6, 8, 12), (2, 4, 4), **_CPU), ((1, 1, 1), "full")),
    (BenchCase("cpu-ragged-5x6x10+8", (5, 6, 10), (2, 4, 4), text_tokens=8, **_CPU), ((1, 1, 1),)),
)


def plan(device: str, quick: bool) -> list[BenchCase]:
    """Every case in run order: all windows of a shape together (dense SDPA runs first)."""
    if quick:
        groups = GPU_QUICK if device == "cuda" else CPU_QUICK
    else:
        shapes = GPU_SHAPES if device == "cuda" else CPU_SHAPES
        groups = tuple((s, WINDOWS) for s in shapes)
    return [dataclasses.replace(shape, window=w) for shape, windows in groups for w in windows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results"),
        help="directory for the JSON (default benchmarks/results)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: one small shape, short loops")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default cuda if available, else cpu",
    )
    p.add_argument(
        "--methods",
        type=lambda s: s.split(","),
        default=None,
        help="only these methods, comma separated (e.g. sdpa-cudnn,flex)",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")

    device = torch.device(args.device)
    cases = plan(args.device, args.quick)
    timing = QUICK_TIMING if args.quick else Timing()
    env = environment(device)
    path = args.out / f"attention-{card_slug(device)}{'-quick' if args.quick else ''}.json"
    print(env_line(env), flush=True)
    print(f"{len(cases)} cases -> {path}", flush=True)

    t0 = time.perf_counter()
    rows: list[dict] = []

    def save(row: dict) -> None:
        rows.append(row)
        write_json(path, env, rows)

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {line}", flush=True)

    run_cases(cases, device, timing, methods=args.methods, env=env, on_row=save, log=log)
    print(f"\nwrote {path} ({len(rows)} rows, {time.perf_counter() - t0:.0f} s)\n")
    print(env_line(env))
    print(format_table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
