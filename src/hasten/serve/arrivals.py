"""Arrival processes: when each request of a trace is offered to the server."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from hasten.serve.request import Request

KINDS = ("burst", "poisson", "gamma", "replay")


def _positive(name: str, value: object, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}; {hint}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}; {hint}")
    return float(value)


def _check_rate(rate: object) -> float:
    return _positive("rate", rate, "it is requests per second, e.g. rate=8.0")


def _check_cv(cv: object) -> float:
    return _positive("cv", cv, "1.0 is Poisson, > 1 burstier, < 1 more regular")


def burst(requests: Sequence[Request]) -> list[Request]:
    """Every request arrives at t=0 (the paper's burst and offline-generation runs)."""
    return [r.at(0.0) for r in requests]


def gamma(requests: Sequence[Request], rate: float, cv: float, *, seed: int = 0) -> list[Request]:
    """Gamma-distributed inter-arrival times: mean ``1 / rate``, coefficient of variation ``cv``.

    Shape ``1 / cv**2`` and scale ``cv**2 / rate`` give that mean and CV; ``cv=1`` is the
    exponential, i.e. Poisson arrivals. The first request arrives at t=0, so a run never
    starts idle; request ``i`` (in list order) gets the ``i``-th arrival.
    """
    rate, cv = _check_rate(rate), _check_cv(cv)
    rng = np.random.default_rng(seed)
    shape = 1.0 / cv**2
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=max(len(requests) - 1, 0))
    arrivals = np.concatenate([[0.0], np.cumsum(gaps)])
    return [r.at(t) for r, t in zip(requests, arrivals.tolist(), strict=False)]


def poisson(requests: Sequence[Request], rate: float, *, seed: int = 0) -> list[Request]:
    """Poisson arrivals at ``rate`` requests per second (exponential gaps, first at t=0).

    The same draws as ``gamma(requests, rate, cv=1.0, seed=seed)``.
    """
    return gamma(requests, rate, 1.0, seed=seed)


def replay(requests: Sequence[Request], *, speedup: float = 1.0) -> list[Request]:
    """Keep the recorded arrivals, divided by ``speedup`` (2.0 offers the trace twice as fast).

    Returned in arrival order (stable for ties), whatever the order of ``requests``.
    """
    speedup = _positive("speedup", speedup, "2.0 replays the trace twice as fast")
    ordered = sorted(requests, key=lambda r: r.arrival)
    return [r.at(r.arrival / speedup) for r in ordered]


@dataclass(frozen=True)
class ArrivalConfig:
    """How requests arrive, as a benchmark row or a CLI names it.

    ``kind`` is one of :data:`KINDS`. ``rate`` (requests/s) is required by ``poisson`` and
    ``gamma``, ``cv`` by ``gamma`` only, ``speedup`` applies to ``replay`` only; passing
    one that the kind does not use is an error, not ignored. ``seed`` drives the random
    kinds (``burst`` and ``replay`` draw nothing).
    """

    kind: str = "burst"
    rate: float | None = None
    cv: float | None = None
    seed: int = 0
    speedup: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"arrival kind {self.kind!r} is not one of {list(KINDS)}")
        if self.kind in ("poisson", "gamma"):
            if self.rate is None:
                raise ValueError(f"{self.kind} arrivals need a rate (requests/s), e.g. rate=8.0")
            object.__setattr__(self, "rate", _check_rate(self.rate))
        elif self.rate is not None:
            raise ValueError(
                f"{self.kind} arrivals take no rate (got {self.rate!r}); "
                f"use kind='poisson' or 'gamma' for a rate"
            )
        if self.kind == "gamma":
            if self.cv is None:
                raise ValueError("gamma arrivals need a cv, e.g. cv=2.0 (1.0 is Poisson)")
            object.__setattr__(self, "cv", _check_cv(self.cv))
        elif self.cv is not None:
            raise ValueError(
                f"{self.kind} arrivals take no cv (got {self.cv!r}); use kind='gamma' for a cv"
            )
        speedup = _positive("speedup", self.speedup, "2.0 replays the trace twice as fast")
        if self.kind != "replay" and speedup != 1.0:
            raise ValueError(
                f"{self.kind} arrivals take no speedup (got {self.speedup!r}); "
                f"it scales recorded times in kind='replay'"
            )
        object.__setattr__(self, "speedup", speedup)
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")

    def apply(self, requests: Sequence[Request]) -> list[Request]:
        """``requests`` with arrivals from this process (new objects; the inputs are unchanged)."""
        if self.kind == "burst":
            return burst(requests)
        if self.kind == "poisson":
            return poisson(requests, self.rate, seed=self.seed)
        if self.kind == "gamma":
            return gamma(requests, self.rate, self.cv, seed=self.seed)
        return replay(requests, speedup=self.speedup)

    def describe(self) -> str:
        """A short label for result rows, e.g. ``gamma(rate=8, cv=2, seed=0)``."""
        if self.kind == "burst":
            return "burst"
        if self.kind == "replay":
            return "replay" if self.speedup == 1.0 else f"replay(speedup={self.speedup:g})"
        args = f"rate={self.rate:g}" + (f", cv={self.cv:g}" if self.kind == "gamma" else "")
        return f"{self.kind}({args}, seed={self.seed})"


def apply_arrivals(
    requests: Sequence[Request],
    kind: str,
    *,
    rate: float | None = None,
    cv: float | None = None,
    seed: int = 0,
    speedup: float = 1.0,
) -> list[Request]:
    """Shorthand for ``ArrivalConfig(kind, rate, cv, seed, speedup).apply(requests)``."""
    return ArrivalConfig(kind, rate=rate, cv=cv, seed=seed, speedup=speedup).apply(requests)
