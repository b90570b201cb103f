"""Serving metrics from per-request timelines: per-token latency, TTFT, TPOT, throughput, waits."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class RequestRecord:
    """One finished request's timeline, in seconds on the trace's clock.

    The same record comes from the simulator and from a real engine run. ``max_wait`` is
    the longest stretch the request spent live without being scheduled (from arrival, or
    from the end of an iteration that ran it, to the start of the next one that did);
    ``None`` when the engine does not report it.
    """

    id: str
    arrival: float
    first_token: float
    finish: float
    output_tokens: int
    prompt_tokens: int = 0
    preemptions: int = 0
    promotions: int = 0
    max_wait: float | None = None

    def __post_init__(self) -> None:
        if not self.arrival <= self.first_token <= self.finish:
            raise ValueError(
                f"request {self.id!r}: need arrival <= first_token <= finish, got "
                f"{self.arrival}, {self.first_token}, {self.finish}"
            )
        if self.output_tokens < 1:
            raise ValueError(f"request {self.id!r}: output_tokens {self.output_tokens} < 1")

    @property
    def latency(self) -> float:
        return self.finish - self.arrival

    @property
    def per_token_latency(self) -> float:
        """End-to-end latency / output tokens (the paper's headline metric, s/token)."""
        return self.latency / self.output_tokens

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first; ``None`` for one-token outputs."""
        if self.output_tokens < 2:
            return None
        return (self.finish - self.first_token) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Summary:
    """Mean, percentiles (numpy's linear interpolation) and max of one quantity."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        v = np.asarray(list(values), dtype=np.float64)
        if v.size == 0:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan)
        p50, p90, p99 = np.percentile(v, [50, 90, 99])
        return cls(int(v.size), float(v.mean()), float(p50), float(p90), float(p99), float(v.max()))


@dataclass(frozen=True)
class Metrics:
    """A run's summary. ``duration`` runs from the first arrival to the last finish."""

    requests: int
    output_tokens: int
    duration: float
    per_token_latency: Summary
    latency: Summary
    ttft: Summary
    tpot: Summary
    max_wait: Summary
    tokens_per_s: float
    requests_per_s: float
    preemptions: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(records: Sequence[RequestRecord]) -> Metrics:
    """Summarize finished requests (unfinished ones are the caller's to report)."""
    if not records:
        raise ValueError("no finished requests to summarize; run the simulation longer")
    start = min(r.arrival for r in records)
    duration = max(r.finish for r in records) - start
    tokens = sum(r.output_tokens for r in records)
    rate = (lambda x: x / duration) if duration > 0 else (lambda x: math.inf)
    return Metrics(
        requests=len(records),
        output_tokens=tokens,
        duration=duration,
        per_token_latency=Summary.of(r.per_token_latency for r in records),
        latency=Summary.of(r.latency for r in records),
        ttft=Summary.of(r.ttft for r in records),
        tpot=Summary.of(r.tpot for r in records if r.tpot is not None),
        max_wait=Summary.of(r.max_wait for r in records if r.max_wait is not None),
        tokens_per_s=rate(tokens),
        requests_per_s=rate(len(records)),
        preemptions=sum(r.preemptions for r in records),
    )


def time_to_finish(records: Sequence[RequestRecord], k: int, *, start: float = 0.0) -> float:
    """Synthetic data generation: seconds from ``start`` until ``k`` requests have finished."""
    if not 1 <= k <= len(records):
        raise ValueError(
            f"k={k} but {len(records)} requests finished; pass 1 <= k <= {len(records)} "
            f"or run the simulation until k finish"
        )
    return float(np.partition([r.finish for r in records], k - 1)[k - 1]) - start


def finished_within(records: Iterable[RequestRecord], seconds: float, *, start: float = 0.0) -> int:
    """Synthetic data generation: how many requests finished within ``seconds`` of ``start``."""
    return sum(1 for r in records if r.finish - start <= seconds)
