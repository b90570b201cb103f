"""Arrival processes: statistics of the gaps, determinism per seed, validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hasten.serve.arrivals import (
    ArrivalConfig,
    apply_arrivals,
    burst,
    gamma,
    poisson,
    replay,
)
from hasten.serve.request import Request
from hasten.serve.trace import load_trace, take

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
N = 20_000


def _requests(n: int = N) -> list[Request]:
    return [Request(f"r{i}", arrival=5.0, prompt_tokens=i % 7) for i in range(n)]


def _times(reqs: list[Request]) -> np.ndarray:
    return np.array([r.arrival for r in reqs])


def _check_arrivals(out: list[Request], reqs: list[Request]) -> None:
    t = _times(out)
    assert len(out) == len(reqs)
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    # Only the arrival changes, in list order.
    assert [r.id for r in out] == [r.id for r in reqs]
    assert all(o.prompt_tokens == r.prompt_tokens for o, r in zip(out, reqs, strict=True))


def test_burst():
    reqs = _requests(10)
    out = burst(reqs)
    assert [r.arrival for r in out] == [0.0] * 10
    assert [r.arrival for r in reqs] == [5.0] * 10  # inputs untouched


@pytest.mark.parametrize("rate", [0.5, 8.0, 64.0])
def test_poisson_mean_gap(rate, seed):
    reqs = _requests()
    out = poisson(reqs, rate, seed=seed)
    _check_arrivals(out, reqs)
    gaps = np.diff(_times(out))
    # Std of the mean of N exponential gaps is (1/rate)/sqrt(N): 6 sigma is about 4.2%.
    tol = 6 / math.sqrt(len(gaps))
    print(f"rate={rate} mean gap={gaps.mean():.5f} target={1 / rate:.5f} tol={tol:.3%}")
    assert gaps.mean() == pytest.approx(1 / rate, rel=tol)


@pytest.mark.parametrize("cv, cv_tol", [(0.5, 0.05), (1.0, 0.05), (2.0, 0.10)])
def test_gamma_mean_and_cv(cv, cv_tol, seed):
    # cv_tol: ~6x the spread of the sample CV over 300 seeds at N=20000 (0.6%, 0.7%,
    # 1.1%), looser for cv=2 whose heavy tail makes the sample CV skewed.
    rate = 10.0
    reqs = _requests()
    out = gamma(reqs, rate, cv, seed=seed)
    _check_arrivals(out, reqs)
    gaps = np.diff(_times(out))
    got_cv = gaps.std() / gaps.mean()
    mean_tol = 6 * cv / math.sqrt(len(gaps))
    print(f"cv={cv}: mean gap {gaps.mean():.5f} (tol {mean_tol:.2%}), cv {got_cv:.4f}")
    assert gaps.mean() == pytest.approx(1 / rate, rel=mean_tol)
    assert got_cv == pytest.approx(cv, rel=cv_tol)


def test_deterministic_per_seed():
    reqs = _requests(1000)
    assert poisson(reqs, 4.0, seed=3) == poisson(reqs, 4.0, seed=3)
    assert poisson(reqs, 4.0, seed=3) != poisson(reqs, 4.0, seed=4)
    assert gamma(reqs, 4.0, 3.0, seed=3) == gamma(reqs, 4.0, 3.0, seed=3)
    assert gamma(reqs, 4.0, 1.0, seed=9) == poisson(reqs, 4.0, seed=9)
    # A config reproduces the function it names.
    cfg = ArrivalConfig("gamma", rate=4.0, cv=3.0, seed=3)
    assert cfg.apply(reqs) == gamma(reqs, 4.0, 3.0, seed=3)


def test_small_lists():
    assert poisson([], 1.0) == []
    assert gamma([Request("only")], 1.0, 2.0)[0].arrival == 0.0


def test_replay_sorts_and_scales():
    reqs = [Request("b", arrival=4.0), Request("a", arrival=1.0), Request("c", arrival=4.0)]
    out = replay(reqs)
    assert [(r.id, r.arrival) for r in out] == [("a", 1.0), ("b", 4.0), ("c", 4.0)]
    fast = replay(reqs, speedup=2.0)
    assert [r.arrival for r in fast] == [0.5, 2.0, 2.0]


@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")
def test_replay_azure(monkeypatch):
    monkeypatch.setenv("HASTEN_DATA", str(DATA))
    reqs = load_trace("azure-conv")
    out = apply_arrivals(reqs, "replay")
    assert out == reqs  # already sorted from 0
    fast = apply_arrivals(take(reqs, 1000), "replay", speedup=4.0)
    assert fast[-1].arrival == pytest.approx(reqs[999].arrival / 4)


def test_config_describe():
    assert ArrivalConfig().describe() == "burst"
    assert ArrivalConfig("poisson", rate=8).describe() == "poisson(rate=8, seed=0)"
    assert ArrivalConfig("gamma", rate=8, cv=2, seed=1).describe() == "gamma(rate=8, cv=2, seed=1)"
    assert ArrivalConfig("replay", speedup=2).describe() == "replay(speedup=2)"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "uniform"}, r"'uniform' is not one of \['burst', 'poisson'"),
        ({"kind": "poisson"}, "need a rate"),
        ({"kind": "poisson", "rate": 0}, "rate must be > 0, got 0; it is requests per second"),
        ({"kind": "poisson", "rate": -2.0}, "rate must be > 0"),
        ({"kind": "poisson", "rate": float("inf")}, "finite number"),
        ({"kind": "poisson", "rate": "8"}, "finite number > 0, got '8'"),
        ({"kind": "poisson", "rate": 8, "cv": 2}, "use kind='gamma' for a cv"),
        ({"kind": "gamma", "rate": 8}, "need a cv"),
        ({"kind": "gamma", "rate": 8, "cv": 0}, r"cv must be > 0, got 0; 1\.0 is Poisson"),
        ({"kind": "burst", "rate": 8}, "burst arrivals take no rate"),
        ({"kind": "poisson", "rate": 8, "speedup": 2}, "take no speedup"),
        ({"kind": "replay", "speedup": 0}, "speedup must be > 0"),
        ({"kind": "poisson", "rate": 8, "seed": -1}, "seed must be an int >= 0"),
    ],
)
def test_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArrivalConfig(**kwargs)


def test_functions_reject():
    reqs = _requests(3)
    with pytest.raises(ValueError, match="rate must be > 0"):
        poisson(reqs, 0.0)
    with pytest.raises(ValueError, match="cv must be > 0"):
        gamma(reqs, 1.0, -1.0)
    with pytest.raises(ValueError, match="speedup must be > 0"):
        replay(reqs, speedup=-1)
