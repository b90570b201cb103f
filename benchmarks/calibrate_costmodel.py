"""Time real prefill and decode steps of a Llama-3-8B-shaped model to calibrate the simulator.

Random bf16 weights (a step's time does not depend on their values), a KV cache in the
model's own GQA layout, SDPA attention, each step captured in a CUDA graph as serving engines
do, median of many replays. Writes every sample and a least-squares fit of

    seconds = a + b_prefill * prefill_tokens + c_prefill_ctx * prefill_tokens * context
              + b_decode * decode_seqs + c_decode_ctx * decode_context_tokens

    HASTEN_COMMIT=<sha> python benchmarks/calibrate_costmodel.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LlamaShape:
    """Llama-3-8B: 32 layers, 4096 hidden, 32 query / 8 kv heads of 128, 14336 MLP."""

    layers: int = 32
    hidden: int = 4096
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    mlp: int = 14336
    vocab: int = 128256


class Layer(torch.nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        self.s = s
        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        self.qkv = torch.nn.Linear(s.hidden, q + 2 * kv, bias=False)
        self.o = torch.nn.Linear(q, s.hidden, bias=False)
        self.up = torch.nn.Linear(s.hidden, 2 * s.mlp, bias=False)  # gate and up, fused
        self.down = torch.nn.Linear(s.mlp, s.hidden, bias=False)
        self.n1 = torch.nn.RMSNorm(s.hidden)
        self.n2 = torch.nn.RMSNorm(s.hidden)

    def forward(self, x, k_cache, v_cache, causal: bool):
        # x [B, T, hidden]; caches [B, kv_heads, L, head_dim] already hold this step's keys.
        s = self.s
        B, T, _ = x.shape
        q = self.qkv(self.n1(x))[..., : s.heads * s.head_dim]
        q = q.view(B, T, s.heads, s.head_dim).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k_cache, v_cache, is_causal=causal, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, -1))
        g, u = self.up(self.n2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


def step_fn(layers, head, B: int, T: int, L: int, s: LlamaShape):
    """One engine step: ``B`` sequences of ``T`` new tokens each over ``L`` context tokens."""
    x = torch.randn(B, T, s.hidden, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, s.kv_heads, L, s.head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)

    def run():
        h = x
        for layer in layers:
            h = layer(h, k, v, causal=T > 1)
        return head(h[:, -1])  # logits of the last position, as sampling needs

    return run


def time_graph(fn, reps: int = 20) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del g
    return sorted(times)[len(times) // 2]


def features(prefill: int, ctx_prefill: int, decode_seqs: int, decode_ctx: int) -> list[float]:
    return [1.0, prefill, prefill * ctx_prefill, decode_seqs, decode_ctx]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    s = LlamaShape()
    torch.manual_seed(0)
    with torch.device("cuda"):
        layers = [Layer(s).to(torch.bfloat16) for _ in range(s.layers)]
        head = torch.nn.Linear(s.hidden, s.vocab, bias=False).to(torch.bfloat16)
    for m in [*layers, head]:
        for w in m.parameters():
            w.requires_grad_(False).normal_(0, 0.02)
    samples = []
    # Prefill chunks (one sequence, causal over its own tokens) and decode batches.
    shapes = [(1, t, t) for t in (128, 512, 1024, 2048, 4096, 8192)]
    shapes += [(b, 1, ctx) for b in (1, 8, 32, 64, 128, 256) for ctx in (256, 1024, 2048)]
    with torch.inference_mode():
        for B, T, L in shapes:
            sec = time_graph(step_fn(layers, head, B, T, L, s))
            prefill = B * T if T > 1 else 0
            row = {"batch": B, "new_tokens": T, "context": L, "seconds": sec}
            row["x"] = features(
                prefill, L if T > 1 else 0, B if T == 1 else 0, B * L if T == 1 else 0
            )
            samples.append(row)
            print(f"B={B:4d} T={T:5d} L={L:5d}  {sec * 1e3:8.3f} ms", flush=True)
            torch.cuda.empty_cache()
    X = torch.tensor([r["x"] for r in samples], dtype=torch.float64)
    y = torch.tensor([r["seconds"] for r in samples], dtype=torch.float64)
    # Relative least squares: a 2 ms decode step matters as much as a 1 s prefill.
    w = 1.0 / y
    coef = torch.linalg.lstsq(X * w[:, None], y * w).solution
    pred = X @ coef
    err = ((pred - y).abs() / y).max().item()
    names = ["a", "b_prefill", "c_prefill_ctx", "b_decode", "c_decode_ctx"]
    fit = dict(zip(names, coef.tolist(), strict=True))
    print("fit:", {k: f"{v:.3e}" for k, v in fit.items()}, f"max rel err {err:.1%}")
    doc = {
        "model": "llama-3-8b shape (random bf16 weights)",
        "shape": asdict(s),
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%F"),
        "fit": fit,
        "max_rel_err": err,
        "samples": samples,
        "features": "a + b_prefill*prefill_tokens + c_prefill_ctx*prefill_tokens*context "
        "+ b_decode*decode_seqs + c_decode_ctx*decode_context_tokens",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "costmodel-llama3-8b-h100.json"
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}; mean step {math.fsum(y.tolist()) / len(y) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
