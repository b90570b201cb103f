"""Triton backend: the block-sparse kernels over tile-aligned chunk tables, with backward."""

from __future__ import annotations

import importlib.util
from typing import ClassVar

import torch

from hasten.attn.backends.base import Backend, Problem, register_backend

HEAD_DIMS = (16, 32, 64, 128)


class TritonBackend(Backend):
    """Fastest on CUDA; on CPU only inside the Triton interpreter (for tests)."""

    name = "triton"
    rank: ClassVar[dict[str, int]] = {"cuda": 0}

    def unavailable(self, problem: Problem) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        from hasten.attn.kernels.ops import interpreting

        dev, dtype, D = problem.device.type, problem.q.dtype, problem.q.shape[-1]
        if dev == "cpu" and not interpreting():
            return "on CPU it runs only in the Triton interpreter (TRITON_INTERPRET=1)"
        if dev not in ("cpu", "cuda"):
            return f"Triton does not run on {dev}"
        if D not in HEAD_DIMS:
            return f"head dim {D} is not supported; use one of {HEAD_DIMS}"
        allowed = (
            (torch.float16, torch.bfloat16)
            if dev == "cuda"
            else (torch.float16, torch.float32, torch.bfloat16)
        )
        if dtype not in allowed:
            return f"dtype {dtype} is not supported on {dev}; use one of {list(allowed)}"
        return None

    def forward(self, p: Problem) -> torch.Tensor:
        from hasten.attn.kernels.ops import sparse_attention_triton
        from hasten.attn.kernels.tuned import config_for

        config = config_for(p.device, p.q.shape[-1])
        return sparse_attention_triton(
            p.q, p.k, p.v, p.layout, p.pattern, p.text_lengths, p.scale, config
        )


register_backend(TritonBackend())
