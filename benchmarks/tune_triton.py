"""Sweep the Triton kernel's configs on one card (the winners go to hasten/attn/kernels/tuned.py).

Every config is checked against FlexAttention's output before it is timed, and reports its
registers, spills and shared memory next to its time:

    HASTEN_COMMIT=<sha> python benchmarks/tune_triton.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

try:
    import hasten  # noqa: F401
except ImportError:  # a bare copy of the tree (the GPU machine): use the source directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hasten.attn import Dense, SlidingTile, VideoLayout, sparse_attention
from hasten.attn.bench import card_slug, environment, kept_flops
from hasten.attn.kernels import ops
from hasten.attn.kernels.ops import KernelConfig, PassConfig, sparse_attention_triton

# Each config with the reason it is worth trying; nothing is swept blindly.
P = PassConfig
FWD = [
    (KernelConfig(fwd=P(128, 128, 8, 3), tma=True), "first sweep's winner: TMA, 128x128 chunks"),
    (KernelConfig(fwd=P(128, 128, 8, 2), tma=True), "two stages leave shared memory to spare"),
    (KernelConfig(fwd=P(128, 64, 8, 3), tma=True), "TMA with 128x64 chunks"),
    (
        KernelConfig(fwd=P(128, 128, 8, 4), tma=True),
        "a fourth stage: 224 of 227 KB of shared memory, may not fit",
    ),
    (
        KernelConfig(fwd=P(128, 128, 8, 3), tma=True, warp_specialize=True),
        "warp-specialized loop: TMA producer warps beside the softmax/MMA warps (Triton >= 3.5)",
    ),
    (
        KernelConfig(fwd=P(128, 128, 8, 2), tma=True, warp_specialize=True),
        "warp-specialized with two buffers (registers, not shared memory, may bind)",
    ),
    (
        KernelConfig(fwd=P(128, 128, 4, 3), tma=True, warp_specialize=True),
        "warp-specialized, one consumer warpgroup (Triton's tutorial shape on Blackwell)",
    ),
]
_Q = P(64, 64, 4, 2)  # the first sweep's best backward chunks, held fixed while the other varies
BWD = [
    (KernelConfig(dkdv=_Q, dq=_Q), "first sweep's winner"),
    (KernelConfig(dkdv=P(64, 64, 8, 2), dq=_Q), "dk, dv: 8 warps, no spills"),
    (KernelConfig(dkdv=P(64, 128, 8, 2), dq=_Q), "dk, dv: 128-token kv chunks, 8 warps"),
    (KernelConfig(dkdv=P(32, 128, 8, 2), dq=_Q), "dk, dv: narrow q steps, wide kv"),
    (KernelConfig(dkdv=P(64, 64, 4, 3), dq=_Q), "dk, dv: deeper pipeline"),
    (KernelConfig(dkdv=_Q, dq=P(128, 64, 8, 2)), "dq: 128-query chunks, 8 warps"),
    (KernelConfig(dkdv=_Q, dq=P(64, 128, 8, 2)), "dq: 128-token kv steps, 8 warps"),
    (KernelConfig(dkdv=_Q, dq=P(128, 32, 4, 2)), "dq: Triton tutorial's shape"),
]
SHAPES = {
    "hunyuanvideo-720p-117f": VideoLayout((30, 48, 80), (6, 8, 8)),
    "wan-720p-81f": VideoLayout((21, 45, 80), (6, 8, 8)),
}


def _resources(name: str, prefix: str = "") -> dict:
    k = ops.LAUNCHED.get(name)
    return {
        f"{prefix}regs": getattr(k, "n_regs", None),
        f"{prefix}spills": getattr(k, "n_spills", None),
        f"{prefix}shared": getattr(getattr(k, "metadata", None), "shared", None),
    }


def _ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=100, rep=800, return_mode="median"))


def _backward_ms(out, inputs, grad) -> float:
    return _ms(lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True))


def _sweep_forward(name, layout, pattern, q, k, v, flops, log) -> list[dict]:
    ref = sparse_attention(q, k, v, layout, pattern, backend="flex")
    rows = []
    for cfg, why in FWD:
        try:
            out = sparse_attention_triton(q, k, v, layout, pattern, config=cfg)
        except Exception as e:  # out of shared memory, or a pass the compiler lacks here
            rows.append({"shape": name, "pass": "fwd", "config": repr(cfg), "why": why,
                         "error": f"{type(e).__name__}: {str(e)[:300]}"})  # fmt: skip
            log(f"{name:24} fwd {cfg} failed: {rows[-1]['error']}")
            continue
        err = float((out.float() - ref.float()).norm() / ref.float().norm())
        ms = _ms(lambda c=cfg: sparse_attention_triton(q, k, v, layout, pattern, config=c))
        row = {"shape": name, "pass": "fwd", "config": repr(cfg), "why": why, "ms": ms}
        row.update(tflops_kept=flops / ms / 1e9, rel_err_vs_flex=err, **_resources("fwd"))
        rows.append(row)
        f = cfg.fwd
        log(f"{name:24} fwd {f.block_m:>3}x{f.block_n:<3} w{f.num_warps} s{f.num_stages} "
            f"tma {cfg.tma:d} ws {cfg.warp_specialize:d} {ms:8.3f} ms "
            f"{row['tflops_kept']:6.1f} TF/s err {err:.1e} "
            f"regs {row['regs']} spills {row['spills']} ({why})")  # fmt: skip
    return rows


def _sweep_backward(name, layout, pattern, q, k, v, flops, heads, log) -> list[dict]:
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    grad = torch.randn_like(q)
    rows = []
    dense = kept_flops(layout, Dense(), 1, heads, 128) * 2.5  # backward: 2.5x forward FLOPs
    for sdpa in ("CUDNN_ATTENTION", "FLASH_ATTENTION"):
        with torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, sdpa)):
            out = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg)
            ms = _backward_ms(out, (qg, kg, vg), grad)
        rows.append(
            {"shape": name, "pass": "bwd", "config": sdpa, "ms": ms, "tflops": dense / ms / 1e9}
        )
        log(f"{name:24} bwd dense {sdpa} {ms:8.3f} ms {dense / ms / 1e9:6.1f} TF/s")
    for cfg, why in BWD:
        out = sparse_attention_triton(qg, kg, vg, layout, pattern, config=cfg)
        ms = _backward_ms(out, (qg, kg, vg), grad)
        res = {**_resources("dkdv", "dkdv_"), **_resources("dq", "dq_")}
        row = {"shape": name, "pass": "bwd", "config": repr(cfg), "why": why, "ms": ms}
        row.update(tflops_kept=2.5 * flops / ms / 1e9, **res)
        rows.append(row)
        log(f"{name:24} bwd dkdv {cfg.dkdv} dq {cfg.dq} {ms:8.3f} ms "
            f"{row['tflops_kept']:6.1f} TF/s {res} ({why})")  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--heads", type=int, default=24)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    pattern = SlidingTile((3, 3, 3))
    rows = []

    def log(line: str) -> None:
        print(line, flush=True)

    for name, layout in SHAPES.items():
        shape = (1, args.heads, layout.seq_len, 128)
        q, k, v = (torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flops = kept_flops(layout, pattern, 1, args.heads, 128)
        rows += _sweep_forward(name, layout, pattern, q, k, v, flops, log)
        if name == "hunyuanvideo-720p-117f":
            rows += _sweep_backward(name, layout, pattern, q, k, v, flops, args.heads, log)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"triton-tuning-{card_slug(dev)}.json"
    doc = {"env": environment(dev), "rows": rows, "date": time.strftime("%F")}
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
