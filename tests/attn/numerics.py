"""Numerical checks relative to PyTorch's own error in the same dtype (flash-attention style)."""

from __future__ import annotations

import math

import torch

# Absolute floor on the relative error, per dtype: below it differences are rounding noise.
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def naive_attention(q, k, v, mask, scale=None) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v in float64, written out: the ground truth."""
    q, k, v = (t.detach().to(torch.float64).cpu() for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    scores = scores.masked_fill(~mask.cpu(), float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", torch.softmax(scores, dim=-1), v)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x = x.detach().to(torch.float64).cpu()
    return float((x - ref).norm() / ref.norm())


def assert_within_torch_error(ours, torch_same_dtype, ref, dtype, name="output") -> None:
    """Pass if err(ours) <= 2 * err(torch in the same dtype) + floor; print all three."""
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    e_ours, e_torch = rel_err(ours, ref), rel_err(torch_same_dtype, ref)
    bound = 2 * e_torch + FLOOR[dtype]
    print(f"{name}: err ours {e_ours:.2e}, torch {e_torch:.2e}, bound {bound:.2e} ({dtype})")
    assert e_ours <= bound, f"{name}: {e_ours:.3e} > {bound:.3e} (torch {e_torch:.3e})"
