"""The oracle backend: dense SDPA with the token-level boolean mask, on any device."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from hasten.attn.backends.base import Backend, Problem, register_backend
from hasten.attn.masks import attention_mask

# auto skips the oracle when its mask alone would take more than this.
MASK_BUDGET_BYTES = 2 << 30


class ReferenceBackend(Backend):
    """Never optimized on purpose: it is what every other backend is tested against."""

    name = "reference"
    rank: ClassVar[dict[str, int]] = {"cpu": 0, "cuda": 90}

    def unavailable(self, problem: Problem) -> str | None:
        S = problem.layout.seq_len
        heads = problem.pattern.heads or 1
        batch = 1 if problem.text_lengths is None else problem.q.shape[0]
        need = batch * heads * S * S
        if need > MASK_BUDGET_BYTES:
            return f"its dense mask needs {need / 2**30:.1f} GiB (> {MASK_BUDGET_BYTES >> 30} GiB)"
        return None

    def forward(self, p: Problem) -> torch.Tensor:
        batch = 1 if p.text_lengths is None else p.q.shape[0]
        mask = attention_mask(p.layout, p.pattern, p.text_lengths, batch).to(p.device)
        return F.scaled_dot_product_attention(p.q, p.k, p.v, attn_mask=mask, scale=p.scale)


register_backend(ReferenceBackend())
