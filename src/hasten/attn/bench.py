"""Attention benchmarks: honest FLOPs, dense baselines and every backend, timed on one card."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hasten.attn.backends import Problem, rank_backends
from hasten.attn.cli import add_pattern_args, layout_from_args, parse_dims, pattern_from_args
from hasten.attn.layout import Dims, VideoLayout
from hasten.attn.op import explain_backends, sparse_attention
from hasten.attn.patterns import Dense, Pattern, SlidingTile

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

Window = Dims | Literal["full"]
Pass = Literal["fwd", "bwd"]
PASSES: tuple[Pass, ...] = ("fwd", "bwd")

# FLOPs per kept (query, key) pair and head-dim element, the FlashAttention convention.
# Forward: QK^T and PV, one multiply-add (2 FLOPs) each. Backward: 5 matmuls (QK^T again
# for P, dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q), so 2.5x the forward.
FLOPS_PER_PAIR: dict[str, int] = {"fwd": 4, "bwd": 10}

# The MFU denominator, TFLOP/s: H100 SXM dense BF16/FP16 tensor-core peak (NVIDIA's
# datasheet lists 1979 "with sparsity", i.e. 2:4 structured sparsity, twice the dense
# peak; H200 has the same peak). Applied to bf16/fp16 rows on CUDA only; on other cards
# (PCIe H100: 756) the column overstates the share of peak.
PEAK_TFLOPS = 989.0

# Dense SDPA baselines, per device type: (method name, the one SDPA backend allowed).
DENSE_METHODS: dict[str, tuple[tuple[str, SDPBackend], ...]] = {
    "cuda": (
        ("sdpa-flash", SDPBackend.FLASH_ATTENTION),
        ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
    ),
    "cpu": (("sdpa-math", SDPBackend.MATH),),
}


def _dims_str(d: Sequence[int]) -> str:
    return "x".join(str(x) for x in d)


@dataclass(frozen=True)
class BenchCase:
    """One attention shape, window and pass to time.

    ``window`` is an STA window in tiles or ``"full"`` (the :class:`Dense` pattern, which
    measures a backend's overhead against dense SDPA at equal work). Cases that differ only
    in ``window`` share one dense SDPA measurement. ``pass_`` is ``"fwd"`` or ``"bwd"``
    (the backward alone: the forward runs once, untimed). ``methods`` limits the case to
    those methods (``None``: dense SDPA and every hasten backend); an
    :class:`ExternalMethod` runs only on cases that name it here.
    """

    name: str
    canvas: Dims
    tile: Dims = (6, 8, 8)
    text_tokens: int = 0
    heads: int = 24
    head_dim: int = 128
    batch: int = 1
    dtype: str = "bf16"
    window: Window = "full"
    pass_: Pass = "fwd"
    methods: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.pass_ not in PASSES:
            raise ValueError(f"pass_ {self.pass_!r} is not one of {list(PASSES)}")
        if self.methods is not None:
            if isinstance(self.methods, str):
                raise ValueError(f"methods must be a sequence of names, got {self.methods!r}")
            object.__setattr__(self, "methods", tuple(self.methods))
        for field in ("heads", "head_dim", "batch"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.window != "full":
            if isinstance(self.window, str):
                raise ValueError(f"window must be three ints or 'full', got {self.window!r}")
            object.__setattr__(self, "window", tuple(int(x) for x in self.window))
        object.__setattr__(self, "canvas", tuple(self.canvas))
        object.__setattr__(self, "tile", tuple(self.tile))
        # Fail at construction, with the pattern's own message, not mid-run.
        self.pattern.validate(self.layout)

    @property
    def layout(self) -> VideoLayout:
        return VideoLayout(self.canvas, self.tile, text_tokens=self.text_tokens)

    @property
    def pattern(self) -> Pattern:
        return Dense() if self.window == "full" else SlidingTile(self.window)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def window_name(self) -> str:
        return "full" if self.window == "full" else _dims_str(self.window)

    @property
    def shape_key(self) -> BenchCase:
        """The case with its window and methods erased: what dense SDPA's cost depends on."""
        return dataclasses.replace(self, window="full", methods=None)

    def wants(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def fields(self) -> dict:
        lay = self.layout
        return {
            "case": self.name,
            "canvas": _dims_str(self.canvas),
            "tile": _dims_str(self.tile),
            "grid": _dims_str(lay.grid),
            "text_tokens": self.text_tokens,
            "seq_len": lay.seq_len,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "batch": self.batch,
            "dtype": self.dtype,
            "window": self.window_name,
            "pass": self.pass_,
        }


@dataclass(frozen=True)
class Timing:
    """How long to time each method (milliseconds, as in ``triton.testing.do_bench``).

    ``min_reps`` stretches ``rep_ms`` for slow kernels (dense SDPA at HunyuanVideo size
    takes ~0.3-0.5 s forward, ~1 s backward), so a median never rests on one or two
    samples. Calls of ``slow_ms`` or more skip ``do_bench`` (its 5 estimating calls and its
    warm-up): the first two calls warm up, then ``min_reps`` (or ``rep_ms`` worth) are timed;
    flushing L2 between calls that each stream gigabytes changes nothing.
    """

    warmup_ms: float = 100.0
    rep_ms: float = 1000.0
    min_reps: int = 5
    cpu_repeats: int = 3
    slow_ms: float = 100.0


QUICK_TIMING = Timing(warmup_ms=10.0, rep_ms=100.0, min_reps=3, cpu_repeats=3)


# ---- FLOPs ----------------------------------------------------------------------------
def kept_pairs(layout: VideoLayout, pattern: Pattern, heads: int) -> int:
    """Kept (query, key) pairs over all ``heads`` (per-head patterns: summed over heads)."""
    density = pattern.density(layout)
    S2 = layout.seq_len**2
    if isinstance(density, list):
        if len(density) != heads:
            raise ValueError(
                f"{type(pattern).__name__} has {len(density)} per-head entries for {heads} heads"
            )
        return sum(round(d * S2) for d in density)
    # density is a ratio of integer pair counts to S^2, so rounding recovers the count.
    return heads * round(density * S2)


def kept_flops(
    layout: VideoLayout, pattern: Pattern, B: int, H: int, D: int, *, mode: str = "fwd"
) -> int:
    """FLOPs of the work a sparse kernel must do: only kept (query, key) pairs count."""
    if mode not in FLOPS_PER_PAIR:
        raise ValueError(f"mode {mode!r} is not counted yet; use one of {list(FLOPS_PER_PAIR)}")
    return FLOPS_PER_PAIR[mode] * B * D * kept_pairs(layout, pattern, H)


def dense_flops(layout: VideoLayout, B: int, H: int, D: int, *, mode: str = "fwd") -> int:
    """FLOPs of full attention on the same sequence (the dense-equivalent yardstick)."""
    return kept_flops(layout, Dense(), B, H, D, mode=mode)


# ---- timing ---------------------------------------------------------------------------
def _time_cuda(fn: Callable[[], object], t: Timing) -> float:
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end), 1e-3)
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None and est < t.slow_ms:
        # do_bench flushes L2 between calls and sizes its loops from its own estimate.
        rep = max(t.rep_ms, t.min_reps * est)
        return float(do_bench(fn, warmup=t.warmup_ms, rep=rep, return_mode="median"))
    # The estimating call above was a warm-up already; slow calls get no more.
    for _ in range(int(t.warmup_ms / est)):
        fn()
    times = []
    for _ in range(max(t.min_reps, int(t.rep_ms / est))):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _time_cpu(fn: Callable[[], object], t: Timing) -> float:
    times = []
    for _ in range(max(1, t.cpu_repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_ms(fn: Callable[[], object], device: torch.device, t: Timing) -> tuple[float, float]:
    """``(median ms, first call s)``; the first call (compile, autotune) is never in the median."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    fn()
    sync()
    first_s = time.perf_counter() - t0
    timer = _time_cuda if device.type == "cuda" else _time_cpu
    return timer(fn, t), first_s


# ---- environment ----------------------------------------------------------------------
def git_commit() -> str:
    """Short commit of the source tree, ``-dirty`` with uncommitted changes, else ``unknown``.

    ``HASTEN_COMMIT`` overrides it, for copies of the tree that travel without ``.git``.
    """
    if os.environ.get("HASTEN_COMMIT"):
        return os.environ["HASTEN_COMMIT"]
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        # Result files from earlier runs must not mark the tree dirty.
        dirty = git("status", "--porcelain", "--", ":/", ":(exclude,top)benchmarks/results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def card_slug(device: torch.device) -> str:
    """File-name form of the card, e.g. ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", card_name(device).lower()).strip("-") or "cpu"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "card": card_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mfu_peak_tflops": PEAK_TFLOPS if cuda else None,
    }


# ---- running --------------------------------------------------------------------------
class ExternalMethod:
    """A method from outside hasten (another package's kernel), timed beside ours.

    It runs only on cases whose ``methods`` name it. ``unavailable`` says why it cannot run
    a case (a skipped row); ``prepare`` returns its forward as a callable on ``q, k, v``
    (loading its code may fail: an error row); ``note``, called once after timing and
    untimed, is what the row should carry besides (e.g. its error against ours).
    """

    name: str = ""

    def unavailable(self, case: BenchCase, q: torch.Tensor) -> str | None:
        return None

    def prepare(
        self, case: BenchCase, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Callable[[], torch.Tensor]:
        raise NotImplementedError

    def note(
        self,
        case: BenchCase,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        forward: Callable[[], torch.Tensor],
    ) -> str:
        return ""


def _inputs(case: BenchCase, device: torch.device) -> tuple[torch.Tensor, ...]:
    shape = (case.batch, case.heads, case.layout.seq_len, case.head_dim)
    grad = case.pass_ == "bwd"
    return tuple(
        torch.randn(shape, device=device, dtype=case.torch_dtype, requires_grad=grad)
        for _ in range(3)
    )


def _dense_fn(q, k, v, backend: SDPBackend) -> Callable[[], torch.Tensor]:
    def fn():
        # The backward runs the kernel family its forward picked; no context needed there.
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return fn


def _sparse_fn(q, k, v, case: BenchCase, backend: str) -> Callable[[], torch.Tensor]:
    layout, pattern = case.layout, case.pattern
    # The public op, as users call it: its validation is microseconds against milliseconds.
    return lambda: sparse_attention(q, k, v, layout, pattern, backend=backend)


def _timed_fn(
    forward: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...], mode: str
) -> Callable[[], object]:
    """What to time: ``forward`` itself, or (``bwd``) the backward of one untimed forward."""
    if mode == "fwd":
        return forward
    out = forward()
    # Random, never zeros: a zero gradient is not what training sends (and could be
    # short-cut); the graph is kept so every timed call does the same work.
    grad_out = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, inputs, grad_out, retain_graph=True)


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip()[:500]


# What SDPA raises when the one backend sdpa_kernel allows cannot take the call (CUDA, CPU).
_SDPA_REFUSALS = ("No available kernel", "No viable backend")


def _measure(
    forward: Callable[[], torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    mode: str,
    device: torch.device,
    timing: Timing,
    *,
    dense: bool,
) -> tuple[str, str, float | None, float | None]:
    """``(status, note, ms, first_s)`` of one method; a failure is a row, never a crash."""
    # sdpa_kernel with one backend refuses with warnings that say why: keep them.
    recorder = warnings.catch_warnings(record=True) if dense else contextlib.nullcontext([])
    in_backward = False
    try:
        with recorder as caught:
            if dense:
                warnings.simplefilter("always")
            fn = _timed_fn(forward, inputs, mode)
            in_backward = mode == "bwd"
            ms, first_s = time_ms(fn, device, timing)
        return "ok", "", ms, first_s
    except Exception as err:
        if device.type == "cuda":
            # After a kernel fault these raise too; the rows that follow will say so.
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        if dense and any(m in str(err) for m in _SDPA_REFUSALS):
            why = "; ".join(str(c.message).splitlines()[0] for c in caught)
            return "skipped", f"SDPA backend refused: {why or _error(err)}"[:500], None, None
        if dense and in_backward:
            # A baseline's own backward failing (cuDNN's refuses some shapes) is a missing
            # baseline, not a hasten error.
            return "skipped", f"SDPA backward refused: {_error(err)}"[:500], None, None
        return "error", _error(err), None, None


def methods_for(
    case: BenchCase, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> list[tuple[str, bool, str | None]]:
    """``(method, is_dense, why it cannot run)`` for every method on ``q``'s device.

    Hasten backends come from the registry in auto's order, so new ones join automatically.
    For a backward case ``q`` requires grad, and backends without a backward say so.
    """
    out: list[tuple[str, bool, str | None]] = [
        (name, True, None) for name, _ in DENSE_METHODS.get(q.device.type, ())
    ]
    problem = Problem(q, k, v, case.layout, case.pattern, None, 1 / math.sqrt(case.head_dim))
    for backend, _ in rank_backends(problem):
        # rank_backends also flags backends that auto never picks on this device; asked for
        # by name they still run, so only the backend's own reason excludes one here.
        out.append((backend.name, False, backend.unavailable(problem)))
    return out


def run_cases(
    cases: Iterable[BenchCase],
    device: torch.device | str,
    timing: Timing = Timing(),
    *,
    methods: Sequence[str] | None = None,
    external: Sequence[ExternalMethod] = (),
    env: dict | None = None,
    on_row: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time every method on every case; dense SDPA once per shape and pass. Returns the rows.

    ``methods`` restricts to those names (on top of each case's own ``methods``);
    ``external`` are methods from outside hasten, run on the cases that name them;
    ``on_row`` sees each row as it is made (to save partial results); ``log`` gets one
    progress line per row.
    """
    device = torch.device(device)
    env = environment(device) if env is None else env
    rows: list[dict] = []
    extra = {m.name: m for m in external}

    def emit(row: dict) -> None:
        row.update(env)
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if log is not None:
            log(_progress(row))

    dense_done: set[BenchCase] = set()
    with _dynamo_limits():
        for case in cases:
            with_dense = case.shape_key not in dense_done
            try:
                if _run_case(case, device, timing, methods, with_dense, extra, emit):
                    dense_done.add(case.shape_key)
            except Exception as err:  # inputs or FLOP counting failed: one row says so
                row = _row(case.fields(), "-", "error", _error(err), None, None, None, None)
                emit(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _run_case(
    case: BenchCase,
    device: torch.device,
    timing: Timing,
    methods: Sequence[str] | None,
    with_dense: bool,
    extra: dict[str, ExternalMethod],
    emit: Callable[[dict], None],
) -> bool:
    """Emit the case's rows; return whether its dense SDPA rows ran (or were due)."""
    layout, B, H, D, mode = case.layout, case.batch, case.heads, case.head_dim, case.pass_
    kept = kept_flops(layout, case.pattern, B, H, D, mode=mode)
    dense = dense_flops(layout, B, H, D, mode=mode)
    q, k, v = _inputs(case, device)
    listed = methods_for(case, q, k, v)
    known = {name for name, _, _ in listed}
    # External methods only where the case names them; a name nobody provides says so.
    for name in case.methods or ():
        if name in extra:
            listed.append((name, False, extra[name].unavailable(case, q)))
        elif name not in known:
            listed.append((name, False, f"no method {name!r} in this run"))

    dense_due = False
    for method, is_dense, reason in listed:
        if not case.wants(method) or (methods is not None and method not in methods):
            continue
        if is_dense:
            dense_due = True
            if not with_dense:
                continue
        fields, work = case.fields(), kept
        if is_dense:
            forward = _dense_fn(q, k, v, dict(DENSE_METHODS[device.type])[method])
            fields, work = {**fields, "window": "full"}, dense
        elif method in extra and reason is None:
            try:
                forward = extra[method].prepare(case, q, k, v)
            except Exception as err:
                emit(_row(fields, method, "error", _error(err), None, None, work, dense, device))
                continue
        else:
            forward = _sparse_fn(q, k, v, case, method)
        if reason is None:
            status, note, ms, first_s = _measure(
                forward, (q, k, v), mode, device, timing, dense=is_dense
            )
            if status == "ok" and method in extra:
                try:
                    note = extra[method].note(case, q, k, v, forward)
                except Exception as err:
                    note = f"check failed: {_error(err)}"
        else:
            status, note, ms, first_s = "skipped", reason, None, None
        emit(_row(fields, method, status, note, ms, first_s, work, dense, device))
    return dense_due


def _row(fields, method, status, note, ms, first_s, work, dense, device=None) -> dict:
    ok = ms is not None
    tflops = work / ms / 1e9 if ok else None
    # MFU only where PEAK_TFLOPS applies: tensor-core dtypes on a CUDA card.
    peak = device is not None and device.type == "cuda" and fields["dtype"] in ("bf16", "fp16")
    return {
        **fields,
        "method": method,
        "status": status,
        "note": note,
        "ms": ms,
        "first_call_s": first_s,
        "kept_fraction": None if work is None else work / dense,
        "kept_flops": work,
        "dense_flops": dense,
        "tflops_kept": tflops,
        "tflops_dense_equiv": dense / ms / 1e9 if ok else None,
        "mfu": tflops / PEAK_TFLOPS if ok and peak else None,
    }


@contextlib.contextmanager
def _dynamo_limits():
    # Each new shape or mask function recompiles flex; past dynamo's recompile limit it
    # silently falls back to eager flex, which materializes S x S scores: raise the limit
    # and make hitting it an error instead. (Names checked: they moved across releases.)
    import torch._dynamo

    cfg = torch._dynamo.config
    wanted = {"recompile_limit": 64, "fail_on_recompile_limit_hit": True}
    with cfg.patch(**{k: v for k, v in wanted.items() if hasattr(cfg, k)}):
        yield


def _progress(row: dict) -> str:
    head = f"{row['case']} {row['window']:>6} {row['pass']} {row['method']:<16}"
    if row["status"] != "ok":
        return f"{head} {row['status']}: {row['note'][:160]}"
    mfu = "" if row.get("mfu") is None else f" ({100 * row['mfu']:.1f}% MFU)"
    note = f"  [{row['note'][:120]}]" if row["note"] else ""
    return (
        f"{head} {row['ms']:9.3f} ms  {row['tflops_kept']:7.4g} TFLOP/s kept{mfu}"
        f"  (first call {row['first_call_s']:.1f} s){note}"
    )


# ---- output ---------------------------------------------------------------------------
def write_json(path: str | os.PathLike, env: dict, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # allow_nan=False: a NaN would make the file unreadable to strict JSON parsers.
    tmp.write_text(json.dumps({"env": env, "rows": rows}, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def format_table(rows: list[dict]) -> str:
    """Aligned text table; ``x dense`` is the best dense SDPA time of that shape and pass
    over ours; ``MFU`` is kept TFLOP/s over :data:`PEAK_TFLOPS` (CUDA, bf16/fp16 rows)."""
    best: dict[tuple, float] = {}
    for r in rows:
        if r["method"].startswith("sdpa-") and r["ms"] is not None:
            key = _shape_of(r)
            best[key] = min(best.get(key, math.inf), r["ms"])
    head = [
        "case",
        "window",
        "pass",
        "method",
        "ms",
        "kept",
        "TF/s kept",
        "MFU",
        "TF/s dense-eq",
        "x dense",
        "note",
    ]
    body = []
    for r in rows:
        ok = r["ms"] is not None
        ref = best.get(_shape_of(r))
        body.append(
            [
                r["case"],
                r["window"],
                r.get("pass", "fwd"),
                r["method"],
                f"{r['ms']:.3f}" if ok else "-",
                "-" if r["kept_fraction"] is None else f"{100 * r['kept_fraction']:.1f}%",
                f"{r['tflops_kept']:.4g}" if ok else "-",
                "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%",
                f"{r['tflops_dense_equiv']:.4g}" if ok else "-",
                f"{ref / r['ms']:.2f}" if ok and ref else "-",
                r["note"][:60] if r["status"] == "ok" else f"{r['status']}: {r['note'][:60]}",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    right = {4, 5, 6, 7, 8, 9}

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def _shape_of(row: dict) -> tuple:
    keys = ("case", "canvas", "tile", "text_tokens", "heads", "head_dim", "batch", "dtype")
    return (*(row[k] for k in keys), row.get("pass", "fwd"))


def env_line(env: dict) -> str:
    parts = [
        f"{k} {env[k]}" for k in ("card", "torch", "cuda", "triton", "python", "commit", "date")
    ]
    return ", ".join(p for p in parts if not p.endswith(" None"))


# ---- command line ---------------------------------------------------------------------
# Defaults per device: CPU finishes in seconds; CUDA is the HunyuanVideo 720p x 117f shape.
DEFAULTS = {
    "cpu": {"canvas": (4, 8, 16), "tile": (2, 2, 2), "heads": 2, "head_dim": 64, "dtype": "fp32"},
    "cuda": {
        "canvas": (30, 48, 80),
        "tile": (6, 8, 8),
        "heads": 24,
        "head_dim": 128,
        "dtype": "bf16",
    },
}


def parse_windows(text: str) -> list[Window]:
    """``"3x3x3,5x5x5,full"`` -> ``[(3, 3, 3), (5, 5, 5), "full"]``."""
    out: list[Window] = []
    for item in text.split(","):
        item = item.strip()
        out.append("full" if item == "full" else parse_dims(item))
    if not out:
        raise argparse.ArgumentTypeError(f"expected windows like 3x3x3,5x5x5,full, got {text!r}")
    return out


def parse_passes(text: str) -> list[Pass]:
    """``"fwd,bwd"`` -> ``["fwd", "bwd"]``."""
    out = [item.strip() for item in text.split(",") if item.strip()]
    bad = [x for x in out if x not in PASSES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"passes are {','.join(PASSES)}, got {text!r}")
    return out  # type: ignore[return-value]


def _add_shape_args(p: argparse.ArgumentParser) -> None:
    cpu, cuda = DEFAULTS["cpu"], DEFAULTS["cuda"]

    def default(key: str) -> str:
        show = (lambda v: _dims_str(v)) if key in ("canvas", "tile") else str
        return f"(default {show(cuda[key])} on cuda, {show(cpu[key])} on cpu)"

    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="where to run (default cuda if available, else cpu)",
    )
    p.add_argument(
        "--canvas", type=parse_dims, default=None, help=f"latent T x H x W {default('canvas')}"
    )
    p.add_argument(
        "--tile", type=parse_dims, default=None, help=f"tile t x h x w {default('tile')}"
    )
    p.add_argument("--text", type=int, default=0, help="text tokens after the video (default 0)")
    p.add_argument("--heads", type=int, default=None, help=f"attention heads {default('heads')}")
    p.add_argument("--head-dim", type=int, default=None, help=f"head dim {default('head_dim')}")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help=f"{default('dtype')}")


def _resolve_shape_args(args: argparse.Namespace) -> torch.device:
    """Fill the device-dependent defaults in place; return the device."""
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda was asked for but torch sees no CUDA device; use --device cpu"
        )
    for key, value in DEFAULTS[name].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return torch.device(name)


def add_bench_command(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time dense SDPA and every sparse backend on one shape",
        description="Time dense SDPA and every registered sparse attention backend "
        "(forward, and backward if asked) on one shape and a few STA windows; report "
        "honest FLOP rates.",
    )
    _add_shape_args(p)
    p.add_argument(
        "--windows",
        type=parse_windows,
        default=parse_windows("3x3x3,5x5x5,full"),
        help="STA windows in tiles, comma separated, 'full' for dense (default 3x3x3,5x5x5,full)",
    )
    p.add_argument(
        "--passes",
        type=parse_passes,
        default=["fwd"],
        help="fwd, bwd or fwd,bwd (default fwd); bwd times the backward alone",
    )
    p.add_argument(
        "--methods",
        type=lambda s: [m.strip() for m in s.split(",")],
        default=None,
        help="only these methods, comma separated (e.g. sdpa-cudnn,flex)",
    )
    p.add_argument("--json", type=Path, default=None, help="write rows here as JSON")
    p.add_argument("--quick", action="store_true", help="short timing loops (a smoke run)")
    p.set_defaults(func=_bench_main)


def _bench_main(args: argparse.Namespace) -> int:
    device = _resolve_shape_args(args)
    cases = [
        BenchCase(
            _dims_str(args.canvas) + (f"+{args.text}" if args.text else ""),
            args.canvas,
            args.tile,
            text_tokens=args.text,
            heads=args.heads,
            head_dim=args.head_dim,
            batch=args.batch,
            dtype=args.dtype,
            window=w,
            pass_=mode,
        )
        for mode in args.passes
        for w in args.windows
    ]
    env = environment(device)
    print(env_line(env), flush=True)
    timing = QUICK_TIMING if args.quick else Timing()
    rows = run_cases(
        cases, device, timing, methods=args.methods, env=env, log=lambda s: print(s, flush=True)
    )
    if args.json is not None:
        write_json(args.json, env, rows)
        print(f"wrote {args.json}")
    print(format_table(rows))
    return 0


def add_backends_command(sub) -> None:
    p = sub.add_parser(
        "backends",
        help="list attention backends and which one auto picks",
        description="Say, for one call shape, which registered backend "
        "backend='auto' picks and why each other one cannot run.",
    )
    _add_shape_args(p)
    p.add_argument("--text-first", action="store_true", help="text before video (CogVideoX)")
    add_pattern_args(p)
    p.add_argument("--grad", action="store_true", help="inputs require grad (training)")
    p.set_defaults(func=_backends_main)


def _backends_main(args: argparse.Namespace) -> int:
    device = _resolve_shape_args(args)
    layout, pattern = layout_from_args(args), pattern_from_args(args)
    shape = (args.batch, args.heads, layout.seq_len, args.head_dim)
    # Real random tensors of the asked shape on the asked device (backends may look at
    # strides or storage); one tensor serves as q, k and v to keep big shapes affordable.
    x = torch.randn(shape, device=device, dtype=DTYPES[args.dtype]).requires_grad_(args.grad)
    print(f"{layout}; {pattern.describe()}; q/k/v {list(shape)} {args.dtype} on {device}")
    print(explain_backends(x, x, x, layout, pattern))
    return 0
