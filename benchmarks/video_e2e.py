"""One denoising step of full-size video DiTs, dense against sparse attention, on one GPU.

A full-size HunyuanVideo transformer (its real config: 20 double- and 40 single-stream
blocks, 24 heads of 128; random bf16 weights, built on the meta device and materialized on
the GPU) at 720p x 117 frames: a 30x96x160 latent, 1x2x2 patches, 30x48x80 = 115,200
video tokens plus 256 valid text tokens. Then a Wan2.1-14B-sized transformer at 720p x 81
frames (latent 21x90x160 -> 21x45x80 tokens). Speed does not depend on the weights.

Per model, every configuration runs in the same process on the same card: ``dense`` (the
best dense baseline: cuDNN SDPA with no mask, as all text is valid), ``no-attention`` (the
floor: attention replaced by its values), STA at (3,3,3) and (5,5,5), a per-head strategy
in the shape the mask search makes (first 15 of 50 steps dense, every later (layer, head)
one of the published candidate windows; timed at a sparse step, and averaged over 50
steps with the dense step) and the ``FrameTiles`` 4:(T-4) pattern. ``dense-mask``
(diffusers' own processors: SDPA with the text padding mask, what the 29.1 s was measured
with) runs only when asked for. About 5-6 minutes on an H100/H200:

    pip install --no-deps diffusers-0.42.1-py3-none-any.whl
    HASTEN_COMMIT=<sha> python benchmarks/video_e2e.py --out $OUT

``--models`` and ``--configs`` pick subsets, ``--repeats`` the timed runs (1 warm-up
first). ``--quick --device cpu`` is a smoke run on tiny random models (seconds). Writes
``video-e2e-<card>.json`` after every row and prints the table last.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

try:
    import hasten  # noqa: F401
except ImportError:  # a bare copy of the tree (the GPU machine): use the source directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hasten.attn.bench import card_slug, env_line, environment, write_json
from hasten.video import (
    DenseStrategy,
    FrameTileStrategy,
    PerHeadStrategy,
    SlidingTileStrategy,
    Strategy,
    disable_sparse_attention,
    enable_sparse_attention,
)
from hasten.video.fullsize import FULL, QUICK, ModelCase, build, inputs

DENSE_STEPS, STEPS = 15, 50  # the published training-free recipe
CONFIGS = ("dense", "no-attention", "sta-333", "sta-555", "per-head", "frame-tiles-4")
OPTIONAL = ("dense-mask",)
DEFAULT_CONFIGS = {
    "hunyuanvideo": CONFIGS,
    "wan": ("dense", "sta-333", "per-head"),
}


# ---- strategies --------------------------------------------------------------------------
def per_head_strategy(case: ModelCase, layers: int, heads: int) -> PerHeadStrategy:
    """Random candidate windows per (step, layer, head) after 15 dense steps (seeded)."""
    rng = random.Random(0)
    table = tuple(
        tuple(tuple(rng.choice(case.candidates) for _ in range(heads)) for _ in range(layers))
        for _ in range(STEPS - DENSE_STEPS)
    )
    return PerHeadStrategy(tile=case.tile, dense_steps=DENSE_STEPS, windows=table)


def strategy_for(config: str, case: ModelCase, layers: int, heads: int) -> Strategy | None:
    """``None``: the model's own processors."""
    tile = case.tile
    return {
        "dense-mask": lambda: None,
        "dense": lambda: DenseStrategy(tile=tile),
        "no-attention": lambda: DenseStrategy(tile=tile),
        "sta-333": lambda: SlidingTileStrategy(window=(3, 3, 3), tile=tile),
        "sta-555": lambda: SlidingTileStrategy(window=(5, 5, 5), tile=tile),
        "per-head": lambda: per_head_strategy(case, layers, heads),
        "frame-tiles-4": lambda: FrameTileStrategy(global_frames=4, tile=tile),
    }[config]()


# ---- timing ------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    fn: Callable[[], torch.Tensor], device, repeats: int
) -> tuple[list[float], float, bool]:
    """1 warm-up and ``repeats`` timed calls: (seconds per call, warm-up seconds, finite)."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    first = time.perf_counter() - t0
    finite = bool(torch.isfinite(out).all())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, first, finite


def _forward(model, x) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        with torch.no_grad():
            return model(**x).sample

    return step


def run_model(case: ModelCase, configs, args, device, dtype, emit, deadline: float) -> None:
    t0 = time.perf_counter()
    model = build(case, device, dtype)
    x = inputs(case, model, device, dtype)
    build_s = time.perf_counter() - t0
    layers = heads = None
    dense_s = None
    for config in configs:
        row = {"model": case.name, "config": config, "canvas": list(case.canvas)}
        row["text_tokens"] = case.text_tokens
        if time.perf_counter() > deadline:
            emit({**row, "status": "skipped: time budget spent"})
            continue
        disable_sparse_attention(model)
        runtime = enable_sparse_attention(model, DenseStrategy(tile=case.tile))
        layers, heads = runtime.layers, runtime.heads
        strategy = strategy_for(config, case, layers, heads)
        if strategy is None:
            disable_sparse_attention(model)
        else:
            runtime = enable_sparse_attention(model, strategy, backend=args.backend)
            # The per-head strategy is timed at its first sparse step.
            runtime.pin_step(DENSE_STEPS if isinstance(strategy, PerHeadStrategy) else 0)
            if config == "no-attention":
                runtime.attend = lambda layer, q, k, v: v  # everything but attention
            row["step_sparsity"] = strategy.step_sparsity(case.canvas, layers, heads, runtime.step)
            if isinstance(strategy, PerHeadStrategy):
                row["overall_sparsity"] = strategy.sparsity(case.canvas, layers, heads, STEPS)
        try:
            times, first, finite = time_step(_forward(model, x), device, args.repeats)
        except Exception as err:  # one failing config must not lose the others
            emit({**row, "status": f"error: {type(err).__name__}: {err}"[:400]})
            continue
        med = statistics.median(times)
        row.update(status="ok", median_s=med, times_s=times, warmup_s=first, finite=finite)
        if config == "dense":
            dense_s = med
        if dense_s is not None:
            row["speedup_vs_dense"] = dense_s / med
            if config == "per-head":
                avg = (DENSE_STEPS * dense_s + (STEPS - DENSE_STEPS) * med) / STEPS
                row["avg_step_50_s"] = avg
                row["avg_speedup_vs_dense"] = dense_s / avg
        emit(row)
    disable_sparse_attention(model)
    print(f"{case.name}: built in {build_s:.1f} s, {layers} layers x {heads} heads", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | config | sparsity (step) | s / step | x dense | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['model']} | {r['config']} | | | | {r['status']} |")
            continue
        sp = f"{r['step_sparsity']:.1%}" if "step_sparsity" in r else ""
        x = f"{r['speedup_vs_dense']:.2f}" if "speedup_vs_dense" in r else ""
        note = "" if r["finite"] else "non-finite output"
        if "avg_step_50_s" in r:
            note = (
                f"50-step average {r['avg_step_50_s']:.2f} s ({r['avg_speedup_vs_dense']:.2f}x), "
                f"overall sparsity {r['overall_sparsity']:.1%}"
            )
        lines.append(
            f"| {r['model']} | {r['config']} | {sp} | {r['median_s']:.3f} | {x} | {note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="hunyuanvideo,wan", help="comma separated (default both)")
    p.add_argument(
        "--configs",
        default=None,
        help=f"comma separated, from {list(CONFIGS + OPTIONAL)} (default per model)",
    )
    p.add_argument("--repeats", type=int, default=2, help="timed runs after 1 warm-up (default 2)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto", help="sparse backend (default auto: triton on GPU)")
    p.add_argument("--quick", action="store_true", help="tiny random models (smoke run)")
    p.add_argument(
        "--budget-s", type=float, default=390.0, help="start no config after this long (390)"
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in FULL]
    if bad:
        p.error(f"unknown models {bad}; choose from {list(FULL)}")
    wanted = None if args.configs is None else [c.strip() for c in args.configs.split(",")]
    if wanted is not None and (unknown := set(wanted) - set(CONFIGS + OPTIONAL)):
        p.error(f"unknown configs {sorted(unknown)}; choose from {list(CONFIGS + OPTIONAL)}")

    env = environment(device)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # its fp32-module hint on .to(bf16)
    env.update(diffusers=diffusers.__version__, dtype=str(dtype), repeats=args.repeats)
    name = f"video-e2e-{card_slug(device)}{'-quick' if args.quick else ''}.json"
    path = args.out / name
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        write_json(path, env, rows)
        took = f"{row['median_s']:.3f} s" if "median_s" in row else row["status"]
        print(f"{row['model']:<24} {row['config']:<14} {took}", flush=True)

    print(env_line(env), flush=True)
    deadline = time.perf_counter() + args.budget_s
    for m in models:
        case = QUICK[m] if args.quick else FULL[m]
        configs = DEFAULT_CONFIGS[m] if wanted is None else wanted
        # The dense baseline goes first: every other row's speed-up is against it.
        configs = sorted(configs, key=lambda c: c != "dense")
        run_model(case, configs, args, device, dtype, emit, deadline)
    print(f"\nwrote {path}\n{env_line(env)}\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
