"""A short, fixed workload for Nsight Compute: the tuned Triton kernels at HunyuanVideo 720p.

    ncu --kernel-name regex:_attn --launch-skip 3 --launch-count 3 \\
        --section SpeedOfLight --section Occupancy --section LaunchStats \\
        python benchmarks/profile_triton.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

try:
    import hasten  # noqa: F401
except ImportError:  # a bare copy of the tree (the GPU machine): use the source directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hasten.attn import SlidingTile, VideoLayout, sparse_attention


def main() -> None:
    layout = VideoLayout((30, 48, 80), (6, 8, 8))
    shape = (1, 24, layout.seq_len, 128)
    q, k, v = (
        torch.randn(shape, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3)
    )
    for _ in range(4):  # launches 1-3 compile and warm up; ncu skips them
        out = sparse_attention(q, k, v, layout, SlidingTile((3, 3, 3)), backend="triton")
        torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
