"""Scoring that never stops a server: what the ranker cannot score is ranked by prompt length."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hasten.serve.policies import Scorer
from hasten.serve.request import Request


def prompt_length_scores(requests: Sequence[Request]) -> list[float]:
    """``-log(1 + prompt tokens)``: shorter prompts rank ahead (higher = shorter, as the ranker)."""
    return [-math.log1p(r.prompt_tokens) for r in requests]


@dataclass
class _Moments:
    """Running mean and variance (Welford), so fallbacks land on the primary's scale."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: Sequence[float]) -> None:
        for v in values:
            self.n += 1
            d = v - self.mean
            self.mean += d / self.n
            self.m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        # With fewer than two values, or all equal, there is no scale to match: use 1.
        var = self.m2 / (self.n - 1) if self.n > 1 else 0.0
        return math.sqrt(var) if var > 0 else 1.0


@dataclass
class FallbackScorer:
    """A :data:`~hasten.serve.policies.Scorer` that always returns one finite score per request.

    ``primary`` (the learned ranker) scores the batch in one call. A request it cannot
    score gets ``fallback``'s value (prompt length by default), standardized onto the
    primary's running mean and spread, so it lands among the ranked requests where its
    prompt length puts it instead of at either end. "Cannot score": no prompt text when
    ``needs_text`` (a prompt given as embeddings, or a tokenizer that failed), a
    non-finite score, or an exception: the batch is then retried one request at a time,
    so one bad prompt does not push the others onto the fallback. Every fallback is
    reported through ``log``; ``fallbacks`` counts them.
    """

    primary: Scorer
    fallback: Scorer = prompt_length_scores
    needs_text: bool = True
    log: Callable[[str], None] = print
    fallbacks: int = 0
    _primary: _Moments = field(default_factory=_Moments, repr=False)
    _fallback: _Moments = field(default_factory=_Moments, repr=False)

    def __call__(self, requests: Sequence[Request]) -> list[float]:
        if not requests:
            return []
        backup = [float(v) for v in self.fallback(requests)]
        self._fallback.add(backup)
        scores: list[float | None] = [None] * len(requests)
        readable = [i for i, r in enumerate(requests) if r.prompt or not self.needs_text]
        if len(readable) < len(requests):
            keep = set(readable)
            ids = [r.id for i, r in enumerate(requests) if i not in keep]
            self.log(
                f"no prompt text to rank for {len(ids)} request(s) {ids[:3]}; by prompt length"
            )
        for i, s in zip(readable, self._try([requests[i] for i in readable]), strict=True):
            scores[i] = s
        good = [s for s in scores if s is not None]
        self._primary.add(good)
        bad = [i for i, s in enumerate(scores) if s is None]
        self.fallbacks += len(bad)
        p, f = self._primary, self._fallback
        for i in bad:
            scores[i] = p.mean + p.std * (backup[i] - f.mean) / f.std
        return scores  # type: ignore[return-value]

    def _try(self, requests: Sequence[Request]) -> list[float | None]:
        """Primary scores; ``None`` where it failed. One call, or one per request on failure."""
        if not requests:
            return []
        try:
            return self._checked(requests, self.primary(requests))
        except Exception as e:
            if len(requests) == 1:
                self.log(f"ranker failed on request {requests[0].id!r} ({e!r}); by prompt length")
                return [None]
            self.log(f"ranker failed on a batch of {len(requests)} ({e!r}); retrying one by one")
            return [self._try([r])[0] for r in requests]

    def _checked(self, requests: Sequence[Request], raw: Sequence[float]) -> list[float | None]:
        out = [float(s) for s in raw]
        if len(out) != len(requests):
            raise ValueError(f"the ranker gave {len(out)} scores for {len(requests)} requests")
        for r, s in zip(requests, out, strict=True):
            if not math.isfinite(s):
                self.log(f"ranker gave {s} for request {r.id!r}; by prompt length")
        return [s if math.isfinite(s) else None for s in out]
