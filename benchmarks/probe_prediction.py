"""CPU probe: a velocity head against an x0 head through a patch bottleneck, same budget.

A 64-wide model on 2x8x8 patches (384 values per token) trains for the same wall time with
each head; both are scored by the flow-matching loss (on the velocity, for both) and by the
mean absolute difference of neighbouring pixels of 20-step samples, against real clips'
(noise left in a sample shows up there). About 6 minutes on 2 CPU cores:

    python benchmarks/probe_prediction.py --seconds 150
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

try:
    import hasten  # noqa: F401
except ImportError:  # a bare copy of the tree: use the source directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hasten.toyvideo.evaluate import eval_prompts, real_clips
from hasten.toyvideo.loop import Budget
from hasten.toyvideo.model import PREDICTIONS, DiTConfig, VideoDiT
from hasten.toyvideo.sampling import generate
from hasten.toyvideo.train import TrainConfig, train_teacher


def roughness(x: torch.Tensor) -> float:
    return (x[..., 1:] - x[..., :-1]).abs().mean().item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=150, help="training time per head")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    for prediction in PREDICTIONS:
        torch.manual_seed(0)
        cfg = DiTConfig(
            frames=8, size=32, patch=(2, 8, 8), dim=64, depth=2, heads=2, prediction=prediction
        )
        train = TrainConfig(batch=32, lr=5e-4, warmup=50, seed=0)
        ema, losses = train_teacher(
            VideoDiT(cfg), Budget(100_000, args.seconds), train, device, log=lambda *a: None
        )
        attrs = eval_prompts(16)
        clips = generate(ema, attrs, 20, 1.0, seed=1)
        real = real_clips(attrs, cfg.world)
        tail = losses[-20:]
        print(
            f"{prediction:8s} {len(losses)} steps, loss {sum(tail) / len(tail):.4f}, "
            f"roughness {roughness(clips):.4f} (real clips {roughness(real):.4f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
