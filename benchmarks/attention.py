"""Sparse attention on one card: dense SDPA baselines beside every hasten backend.

Run on the GPU machine; about 4-5 minutes on an H100 (the estimate is printed first),
mostly compiles and dense SDPA at 115,200 tokens. A copy of the tree without ``.git``
records the commit only if told (``HASTEN_COMMIT``):

    HASTEN_COMMIT=<sha> python benchmarks/attention.py --out $OUT \\
        --fastvideo-dir <folder with fastvideo-kernel 0.3.5's st_attn_triton.py>

Forward at four windows on two canvases, backward at (3,3,3) (and the full window on
HunyuanVideo), and one case beside fastvideo-kernel's own Triton STA kernel, which is never
committed here: without ``--fastvideo-dir`` its row says skipped. ``--passes`` and
``--only`` run subsets. ``--quick`` is a smoke run (small shapes); ``--device cpu --quick``
finishes in seconds. Writes ``attention-<card>.json`` (``-quick`` added for smoke runs)
after every row, so a run cut short still leaves its rows, and prints the table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

try:
    import hasten  # noqa: F401
except ImportError:  # a bare copy of the tree (the GPU machine): use the source directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hasten.attn import sparse_attention
from hasten.attn.bench import (
    PASSES,
    QUICK_TIMING,
    BenchCase,
    ExternalMethod,
    Timing,
    Window,
    card_slug,
    dense_flops,
    env_line,
    environment,
    format_table,
    kept_flops,
    parse_passes,
    run_cases,
    write_json,
)
from hasten.attn.layout import Dims

WINDOWS = ((3, 3, 3), (3, 3, 5), (5, 5, 5), "full")

# HunyuanVideo 720p x 117 frames (the spec's reference shape), then Wan 720p x 81 frames,
# whose 21 x 45 latent the 6 x 8 x 8 tile does not divide (partial edge tiles).
HUNYUAN = BenchCase("hunyuanvideo-720p-117f", (30, 48, 80), (6, 8, 8), heads=24, head_dim=128)
WAN = BenchCase("wan-720p-81f", (21, 45, 80), (6, 8, 8), heads=24, head_dim=128)
# Beside fastvideo-kernel's Triton STA kernel, whose text-free path accepts only 18x48x80
# (and 36x48x48): the same tile and window, dense cuDNN and FlexAttention in the same run.
FASTVIDEO = BenchCase(
    "fastvideo-18x48x80",
    (18, 48, 80),
    (6, 8, 8),
    heads=24,
    head_dim=128,
    methods=("sdpa-cudnn", "flex", "triton", "fastvideo-triton"),
)

# (shape, windows, pass) groups in run order; dense SDPA runs once per shape and pass.
# Backward at full window only on HunyuanVideo: dense backward there is ~1 s a call.
Group = tuple[BenchCase, tuple[Window, ...], str]
GPU_PLAN: tuple[Group, ...] = (
    (HUNYUAN, WINDOWS, "fwd"),
    (WAN, WINDOWS, "fwd"),
    (FASTVIDEO, ((3, 3, 3),), "fwd"),
    (HUNYUAN, ((3, 3, 3), "full"), "bwd"),
    (WAN, ((3, 3, 3),), "bwd"),
)
_SMALL = BenchCase("small-12x24x40", (12, 24, 40), (6, 8, 8))
GPU_QUICK: tuple[Group, ...] = (
    (_SMALL, ((3, 3, 3), "full"), "fwd"),
    (_SMALL, ((3, 3, 3),), "bwd"),
)

# CPU: the same code paths (a ragged canvas, text tokens, backward) at toy sizes.
_CPU = {"heads": 2, "head_dim": 32, "dtype": "fp32"}
_CPU_SQUARE = BenchCase("cpu-8x8x16", (8, 8, 16), (2, 2, 2), **_CPU)
_CPU_RAGGED = BenchCase("cpu-ragged-7x10x12+16", (7, 10, 12), (2, 4, 4), text_tokens=16, **_CPU)
CPU_PLAN: tuple[Group, ...] = (
    (_CPU_SQUARE, WINDOWS, "fwd"),
    (_CPU_RAGGED, WINDOWS, "fwd"),
    (_CPU_SQUARE, ((3, 3, 3),), "bwd"),
    (_CPU_RAGGED, ((3, 3, 3),), "bwd"),
)
_TINY = BenchCase("cpu-tiny-6x8x12", (6, 8, 12), (2, 4, 4), **_CPU)
_TINY_RAGGED = BenchCase("cpu-ragged-5x6x10+8", (5, 6, 10), (2, 4, 4), text_tokens=8, **_CPU)
CPU_QUICK: tuple[Group, ...] = (
    (_TINY, ((1, 1, 1), "full"), "fwd"),
    (_TINY_RAGGED, ((1, 1, 1),), "fwd"),
    (_TINY, ((1, 1, 1),), "bwd"),
)


def plan(
    device: str,
    quick: bool,
    passes: Sequence[str] = PASSES,
    only: Sequence[str] | None = None,
) -> list[BenchCase]:
    """Every case in run order, limited to ``passes`` and to case names containing any of
    ``only``: all windows of a shape and pass together (dense SDPA runs first)."""
    if device == "cuda":
        groups = GPU_QUICK if quick else GPU_PLAN
    else:
        groups = CPU_QUICK if quick else CPU_PLAN
    return [
        dataclasses.replace(shape, window=w, pass_=mode)
        for shape, windows, mode in groups
        if mode in passes and (not only or any(s in shape.name for s in only))
        for w in windows
    ]


# ---- fastvideo-kernel's Triton kernel -------------------------------------------------
FASTVIDEO_FILE = "st_attn_triton.py"
# What its entry point accepts: canvas -> (dit_seq_shape, has_text). HunyuanVideo's canvas
# only with 1-256 text tokens after the video, the other two only without text.
FASTVIDEO_SHAPES: dict[Dims, tuple[str, bool]] = {
    (18, 48, 80): ("18x48x80", False),
    (36, 48, 48): ("36x48x48", False),
    (30, 48, 80): ("30x48x80", True),
}
FASTVIDEO_MAX_TEXT = 256
# Its autotuner ships 72 configs (minutes of compiling); these are the ones it may try:
# (BLOCK_Q, BLOCK_KV, num_warps, num_stages).
FASTVIDEO_CONFIGS = ((64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3))


def _config_key(config) -> tuple:
    kwargs = getattr(config, "kwargs", None) or {}
    return (
        kwargs.get("BLOCK_Q"),
        kwargs.get("BLOCK_KV"),
        getattr(config, "num_warps", None),
        getattr(config, "num_stages", None),
    )


def limit_autotune(kernel, wanted: Sequence[tuple[int, int, int, int]]) -> str:
    """Make a ``triton.autotune`` kernel try only ``wanted`` configs; say what was done.

    ``triton.autotune`` returns an ``Autotuner`` that keeps its ``triton.Config`` list as
    ``configs`` (triton 2.x to 3.7, 3.6 included) and benchmarks every one of them on its
    first call per key, so this must run before the first call. Shipped configs that match
    are kept (with whatever else they set); if none match they are built.
    """
    configs = getattr(kernel, "configs", None)
    if not isinstance(configs, list) or not configs:
        return f"autotune left as shipped (no config list on {type(kernel).__name__})"
    if getattr(kernel, "cache", None):
        return "autotune left as shipped (it had tuned already)"
    keep = [c for c in configs if _config_key(c) in set(wanted)]
    if not keep:
        import triton

        keep = [
            triton.Config({"BLOCK_Q": bq, "BLOCK_KV": bkv}, num_warps=w, num_stages=s)
            for bq, bkv, w, s in wanted
        ]
    kernel.configs = keep
    shown = ", ".join("/".join(str(x) for x in _config_key(c)) for c in keep)
    return (
        f"autotune limited to {len(keep)} of its {len(configs)} configs "
        f"(BLOCK_Q/BLOCK_KV/warps/stages {shown})"
    )


class FastVideoTriton(ExternalMethod):
    """fastvideo-kernel 0.3.5's Triton STA forward, from ``st_attn_triton.py`` in a folder.

    Its q, k, v are ``[B, H, S, D]`` in its tile-major order (tiles in raster order, raster
    inside a tile), hasten's order whenever the tile divides the canvas, as on every shape
    it accepts; so the benchmark's inputs go in unchanged. ``devices``, ``shapes`` and
    ``tile`` are there for tests (a stand-in module on CPU).
    """

    name = "fastvideo-triton"

    def __init__(
        self,
        directory: str | Path | None,
        *,
        devices: Sequence[str] = ("cuda",),
        shapes: dict[Dims, tuple[str, bool]] = FASTVIDEO_SHAPES,
        tile: Dims = (6, 8, 8),
    ) -> None:
        self.directory = None if directory is None else Path(directory)
        self.devices, self.shapes, self.tile = tuple(devices), dict(shapes), tuple(tile)
        self._module = None
        self._configs_note = ""

    def unavailable(self, case: BenchCase, q: torch.Tensor) -> str | None:
        if self.directory is None:
            return f"no --fastvideo-dir (a folder with fastvideo-kernel 0.3.5's {FASTVIDEO_FILE})"
        path = self.directory / FASTVIDEO_FILE
        if not path.is_file():
            return f"{path} not found (copy it from fastvideo-kernel 0.3.5)"
        if case.pass_ != "fwd":
            return "its Triton kernel is forward only"
        if q.device.type not in self.devices:
            return f"its Triton kernel runs on {', '.join(self.devices)} only"
        if case.window == "full" or case.tile != self.tile:
            return f"it takes STA windows over {'x'.join(map(str, self.tile))} tiles only"
        if case.canvas not in self.shapes:
            names = ", ".join(name for name, _ in self.shapes.values())
            return f"its Triton path accepts only canvases {names}"
        name, has_text = self.shapes[case.canvas]
        if has_text and not 1 <= case.text_tokens <= FASTVIDEO_MAX_TEXT:
            return f"at {name} it needs 1-{FASTVIDEO_MAX_TEXT} text tokens"
        if not has_text and case.text_tokens:
            return f"at {name} it takes no text tokens"
        return None

    def _load(self):
        if self._module is None:
            path = self.directory / FASTVIDEO_FILE
            spec = importlib.util.spec_from_file_location("st_attn_triton", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # as an import would (Triton may look it up)
            spec.loader.exec_module(module)
            self._configs_note = limit_autotune(
                getattr(module, "triton_sta_kernel", None), FASTVIDEO_CONFIGS
            )
            self._module = module
        return self._module

    def prepare(self, case, q, k, v) -> Callable[[], torch.Tensor]:
        attn = self._load().sliding_tile_attention_triton
        seq_shape, has_text = self.shapes[case.canvas]
        windows = [tuple(case.window)] * case.heads  # one (t, h, w) per head

        def fn():
            return attn(
                q, k, v, windows, case.text_tokens, has_text=has_text, dit_seq_shape=seq_shape
            )

        return fn

    def note(self, case, q, k, v, forward) -> str:
        """Its error against hasten's FlexAttention backend (untimed), and its configs."""
        out = forward()
        try:
            ref = sparse_attention(q, k, v, case.layout, case.pattern, backend="flex")
        except Exception as err:
            check = f"not checked: flex failed ({type(err).__name__})"
        else:
            ref = ref.float()
            rel = ((out.float() - ref).norm() / ref.norm()).item()
            check = f"{'MISMATCH: ' if not rel < 2e-2 else ''}rel err vs flex {rel:.1e}"
        return f"{check}; {self._configs_note}"


# ---- time estimate --------------------------------------------------------------------
# Rough H100 figures behind the printed estimate, not results: forward TFLOP/s on the work
# each method does (backward at EST_BWD_RATE of it), seconds its first call spends
# compiling or autotuning per case, and start-up. The reference backend is skipped at
# these sizes (its mask would not fit) and costs nothing.
EST_TFLOPS = {
    "sdpa-flash": 350.0,
    "sdpa-cudnn": 600.0,
    "flex": 300.0,
    "triton": 450.0,
    "fastvideo-triton": 350.0,
}
EST_BWD_RATE = 0.8
EST_FIRST_S = {
    "fwd": {"flex": 3.0, "triton": 4.0, "fastvideo-triton": 20.0},
    "bwd": {"flex": 20.0, "triton": 8.0},
}
EST_START_S = 20.0
EXTERNAL = ("fastvideo-triton",)


def _timing_s(ms: float, t: Timing) -> float:
    """Seconds ``time_ms`` spends on a call of ``ms`` (mirrors its two paths)."""
    if ms >= t.slow_ms:
        calls = 2 + int(t.warmup_ms / ms) + max(t.min_reps, int(t.rep_ms / ms))
        return calls * ms / 1e3
    # Our 2 calls, do_bench's first and 5 estimating calls, then warm-up and rep.
    return (8 * ms + t.warmup_ms + max(t.rep_ms, t.min_reps * ms)) / 1e3


def estimate_s(cases: Sequence[BenchCase], t: Timing, methods: Sequence[str] | None) -> float:
    """A rough H100 run time of ``cases`` from EST_* (see there)."""
    total, dense_seen = EST_START_S, set()
    for case in cases:
        lay, B, H, D, mode = case.layout, case.batch, case.heads, case.head_dim, case.pass_
        for name, rate in EST_TFLOPS.items():
            if not case.wants(name) or (methods is not None and name not in methods):
                continue
            if name in EXTERNAL and name not in (case.methods or ()):
                continue
            dense = name.startswith("sdpa-")
            if dense and case.shape_key in dense_seen:
                continue
            if dense:
                work = dense_flops(lay, B, H, D, mode=mode)
            else:
                work = kept_flops(lay, case.pattern, B, H, D, mode=mode)
            ms = work / (rate * (EST_BWD_RATE if mode == "bwd" else 1.0)) / 1e9
            # bwd: one untimed forward first (2.5x fewer FLOPs at the forward rate).
            fwd_ms = ms * EST_BWD_RATE / 2.5 if mode == "bwd" else 0.0
            total += _timing_s(ms, t) + fwd_ms / 1e3 + EST_FIRST_S[mode].get(name, 1.0)
        dense_seen.add(case.shape_key)
    return total


# ---- main -----------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results"),
        help="directory for the JSON (default benchmarks/results)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: small shapes, short loops")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default cuda if available, else cpu",
    )
    p.add_argument(
        "--methods",
        type=_names,
        default=None,
        help="only these methods, comma separated (e.g. sdpa-cudnn,flex)",
    )
    p.add_argument(
        "--passes",
        type=parse_passes,
        default=list(PASSES),
        help="fwd, bwd or fwd,bwd (default both)",
    )
    p.add_argument(
        "--only",
        type=_names,
        default=None,
        help="only cases whose name contains one of these, comma separated (e.g. wan)",
    )
    p.add_argument(
        "--fastvideo-dir",
        type=Path,
        default=None,
        help=f"folder holding fastvideo-kernel 0.3.5's {FASTVIDEO_FILE} (never committed); "
        "without it that method's row says skipped",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")

    device = torch.device(args.device)
    cases = plan(args.device, args.quick, args.passes, args.only)
    if not cases:
        p.error("no case left after --passes/--only")
    timing = QUICK_TIMING if args.quick else Timing()
    env = environment(device)
    path = args.out / f"attention-{card_slug(device)}{'-quick' if args.quick else ''}.json"
    print(env_line(env), flush=True)
    estimate = ""
    if device.type == "cuda":
        est = estimate_s(cases, timing, args.methods)
        estimate = f", about {est / 60:.1f} min on an H100 (rough: assumed rates and compiles)"
    print(f"{len(cases)} cases -> {path}{estimate}", flush=True)

    t0 = time.perf_counter()
    rows: list[dict] = []

    def save(row: dict) -> None:
        rows.append(row)
        write_json(path, env, rows)

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {line}", flush=True)

    external = [FastVideoTriton(args.fastvideo_dir)]
    run_cases(
        cases,
        device,
        timing,
        methods=args.methods,
        external=external,
        env=env,
        on_row=save,
        log=log,
    )
    print(f"\nwrote {path} ({len(rows)} rows, {time.perf_counter() - t0:.0f} s)\n")
    print(env_line(env))
    print(format_table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
