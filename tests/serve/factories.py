"""Hand-built traces and engines for known-answer scheduling tests."""

from __future__ import annotations

from collections.abc import Sequence

from hasten.serve.costmodel import CostModel
from hasten.serve.request import Request
from hasten.serve.simulator import SimConfig

#: Every iteration takes one second: finish times count iterations.
ONE_SECOND = CostModel.constant(1.0)


def make_requests(
    outputs: Sequence[int],
    *,
    ids: Sequence[str] | None = None,
    prompts: int | Sequence[int] = 1,
    arrivals: float | Sequence[float] = 0.0,
) -> list[Request]:
    """Requests ``ids`` (default ``r0, r1, ...``) with the given output lengths."""
    n = len(outputs)
    ids = list(ids) if ids is not None else [f"r{i}" for i in range(n)]
    prompts = [prompts] * n if isinstance(prompts, int) else list(prompts)
    arrivals = [arrivals] * n if isinstance(arrivals, int | float) else list(arrivals)
    return [
        Request(id=i, arrival=float(a), prompt_tokens=p, output_tokens=o)
        for i, o, p, a in zip(ids, outputs, prompts, arrivals, strict=True)
    ]


def engine(**kwargs) -> SimConfig:
    """A config with one-token KV blocks, so hand-computed KV counts are token counts."""
    return SimConfig(**{"block_size": 1, **kwargs})
