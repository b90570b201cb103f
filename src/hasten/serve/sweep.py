"""Simulated serving experiments: load a workload, run policies under arrival processes, plot.

What ``hasten simulate`` and ``hasten simulate compare`` run, usable from scripts too. A
*workload* is a trace whose requests all carry recorded output lengths; a run takes its
first ``N`` requests, gives them arrivals, and simulates one policy. A sweep re-uses one
workload, one score table and one arrival draw per load point across all policies, so the
policies differ only in their ordering (the paper's replay set-up, spec section 4).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hasten.serve.arrivals import ArrivalConfig
from hasten.serve.costmodel import CostModel
from hasten.serve.metrics import finished_within, time_to_finish
from hasten.serve.policies import Bucket, Policy, make_policy, precomputed_scores
from hasten.serve.request import Request
from hasten.serve.scorers import Kind, ScoreTable
from hasten.serve.simulator import SimConfig, simulate
from hasten.serve.trace import join_lengths, load_trace

#: The default trace: one hour of Azure production chat traffic, with token counts and
#: arrival times, shipped in the shared data folder (no GPU, no download, no generation).
DEFAULT_TRACE = "azure-conv"
#: The paper's burst size (2,000 requests at t=0).
DEFAULT_BURST = 2000


# ---- workloads ------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """A trace's requests in file order, every one with ``output_tokens``."""

    trace: str
    requests: tuple[Request, ...]
    lengths: str | None = None
    #: Requests of the trace left out for want of a recorded length (``lengths`` given).
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.requests)

    def first(self, n: int, why: str = "") -> list[Request]:
        """The first ``n`` requests (in trace order)."""
        if not 1 <= n <= len(self.requests):
            raise ValueError(
                f"{why or 'the run'} needs {n} requests but {self.describe()} holds "
                f"{len(self.requests)}; ask for fewer"
            )
        return list(self.requests[:n])

    @property
    def has_arrivals(self) -> bool:
        return any(r.arrival > 0 for r in self.requests)

    def describe(self) -> str:
        joined = f" + lengths {self.lengths}" if self.lengths else ""
        return f"trace {self.trace}{joined}"


def load_workload(trace: str = DEFAULT_TRACE, lengths: str | Path | None = None) -> Workload:
    """Load ``trace`` (a file or a shared data name) and, with ``lengths``, join recorded lengths.

    Requests without a recorded length are left out of a join (a trace still being
    generated covers only part of its prompts); none left is an error. Without
    ``lengths``, every request must carry its own ``output_tokens``.
    """
    requests = load_trace(trace)
    dropped = 0
    if lengths is not None:
        joined = join_lengths(requests, lengths, missing="drop")
        if not joined:
            raise ValueError(
                f"none of the {len(requests)} requests of {trace} has a sample-0 row in "
                f"{lengths} (ids like {[r.id for r in requests[:2]]}); are they for this trace?"
            )
        dropped = len(requests) - len(joined)
        requests = joined
    unknown = [r.id for r in requests if r.output_tokens is None]
    if unknown:
        raise ValueError(
            f"{len(unknown)} of {len(requests)} requests of {trace} have no output length "
            f"(first: {unknown[:3]}); the simulator replays recorded lengths, so pass "
            f"--lengths FILE with rows id, sample, prompt_tokens, output_tokens (e.g. "
            f"traces/sharegpt-smollm2.jsonl from `hasten trace generate`)"
        )
    return Workload(str(trace), tuple(requests), str(lengths) if lengths else None, dropped)


# ---- policies -------------------------------------------------------------------------
def score_kind(policy: str) -> Kind | None:
    """What predictions ``policy`` needs: ``"score"`` (ltr), ``"bucket"``, or ``None``."""
    built = make_policy(policy)
    if isinstance(built, Bucket):
        return "bucket"
    if "scorer" in {f.name for f in dataclasses.fields(built)}:
        return "score"
    return None


def check_policies(names: Sequence[str]) -> list[str]:
    """Validate policy names up front (a sweep should not fail at its last run)."""
    if not names:
        raise ValueError("no policies given")
    for name in names:
        make_policy(name)  # raises with the list of valid names
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise ValueError(f"policies {dupes} are listed twice")
    return list(names)


def build_policy(
    name: str,
    scores: Mapping[Kind, ScoreTable],
    *,
    starvation: tuple[int, int] | bool | None = None,
) -> Policy:
    """``make_policy(name)`` with its scorer from ``scores`` and, when given, a guard.

    ``starvation=None`` keeps the policy's own default (``ltr-starvation``: 200/10);
    ``False`` turns a guard off; a pair sets it.
    """
    kwargs: dict = {} if starvation is None else {"starvation": starvation}
    kind = score_kind(name)
    if kind is not None:
        if kind not in scores:
            raise ValueError(
                f"policy {name!r} needs predictions ({kind}s): pass --scores FILE, "
                f"--ranker PATH|default, or --oracle-noise SIGMA (synthetic)"
            )
        kwargs["scorer"] = precomputed_scores(scores[kind].values)
    return make_policy(name, **kwargs)


# ---- runs -----------------------------------------------------------------------------
def jsonable(value):
    """``value`` with NaN and infinities as ``None`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def engine_dict(config: SimConfig, cost: CostModel) -> dict:
    return {
        **dataclasses.asdict(config),
        "cost_model": cost.name,
        "cost_model_placeholder": cost.placeholder,
    }


def run(
    requests: Sequence[Request],
    policy: Policy,
    *,
    config: SimConfig,
    cost: CostModel,
    first: int | None = None,
    budget: float | None = None,
) -> dict:
    """Simulate one run; return a JSON-ready row (``metrics`` is :class:`Metrics` as a dict).

    ``first`` / ``budget`` are the synthetic-data-generation questions (seconds until
    ``first`` requests finish; requests finished within ``budget`` seconds). The run stops
    as soon as it can answer them, so ``metrics`` then covers only what had finished.
    """
    if first is not None and not 1 <= first <= len(requests):
        raise ValueError(f"--first {first} must be between 1 and the {len(requests)} requests run")
    if budget is not None and not budget > 0:
        raise ValueError(f"--budget must be > 0 seconds, got {budget}")
    start = min((r.arrival for r in requests), default=0.0)
    tic = time.perf_counter()
    generation: dict = {}
    if first is not None and budget is not None:
        # Two questions, two stops: the longer of the two runs supplies the metrics.
        by_k = simulate(requests, policy, config=config, cost=cost, stop_after=first)
        generation["time_to_first"] = time_to_finish(by_k.records, first, start=start)
        result = simulate(requests, policy, config=config, cost=cost, until=start + budget)
        generation["finished_within_budget"] = finished_within(result.records, budget, start=start)
        if result.end_time < by_k.end_time:
            result = by_k
    else:
        result = simulate(
            requests,
            policy,
            config=config,
            cost=cost,
            stop_after=first,
            until=None if budget is None else start + budget,
        )
        if first is not None:
            generation["time_to_first"] = time_to_finish(result.records, first, start=start)
        if budget is not None:
            generation["finished_within_budget"] = finished_within(
                result.records, budget, start=start
            )
    row = {
        "policy": policy.describe(),
        "requests": len(requests),
        "finished": len(result.records),
        "unfinished": len(result.unfinished),
        "iterations": result.num_iterations,
        "end_time": result.end_time,
        "wall_s": time.perf_counter() - tic,
        "metrics": jsonable(result.metrics().to_dict()) if result.records else None,
    }
    if generation:
        row["generation"] = {"first": first, "budget": budget, **generation}
    return row


# ---- sweeps ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepConfig:
    """A ``compare`` sweep: every policy at every Poisson rate, and once in a burst.

    A rate point runs ``round(rate * duration)`` requests (the paper offered 2-64 req/s
    for 60 s) with Poisson (``cv=None``) or gamma arrivals drawn once per rate from
    ``seed`` and shared by all policies. ``burst=0`` skips the burst.
    ``starvation`` overrides the guard of the policies that carry one by default (``False``:
    off).
    """

    policies: tuple[str, ...] = ("fcfs", "ltr", "ltr-starvation", "mlfq", "sjf")
    rates: tuple[float, ...] = (2, 4, 8, 16, 32, 64)
    duration: float = 60.0
    burst: int = DEFAULT_BURST
    cv: float | None = None
    seed: int = 0
    starvation: tuple[int, int] | bool | None = None

    def __post_init__(self) -> None:
        check_policies(self.policies)
        if not self.rates and not self.burst:
            raise ValueError("nothing to run: give rates or a burst size > 0")
        bad = [r for r in self.rates if not (isinstance(r, int | float) and r > 0)]
        if bad:
            raise ValueError(f"rates must be > 0 requests/s, got {bad}")
        if not self.duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration}")
        if not isinstance(self.burst, int) or self.burst < 0:
            raise ValueError(f"burst must be an int >= 0 (0 skips it), got {self.burst!r}")

    def points(self) -> list[tuple[ArrivalConfig, int]]:
        """``(arrival process, number of requests)`` per load point, rates then burst."""
        kind = "poisson" if self.cv is None else "gamma"
        out = [
            (
                ArrivalConfig(kind, rate=float(r), cv=self.cv, seed=self.seed),
                max(1, round(r * self.duration)),
            )
            for r in self.rates
        ]
        if self.burst:
            out.append((ArrivalConfig("burst"), self.burst))
        return out

    def requests_needed(self) -> int:
        return max(n for _, n in self.points())


def sweep(
    workload: Workload,
    sweep_config: SweepConfig,
    scores: Mapping[Kind, ScoreTable],
    *,
    config: SimConfig,
    cost: CostModel,
    progress: bool = True,
) -> list[dict]:
    """Run every policy at every load point; one row per run, as :func:`run` gives."""
    from tqdm.auto import tqdm

    points = [
        (arrivals, arrivals.apply(workload.first(n, f"{arrivals.describe()} ({n} requests)")))
        for arrivals, n in sweep_config.points()
    ]
    guard = sweep_config.starvation
    policies = []
    for name in sweep_config.policies:
        guarded = make_policy(name).starvation is not None
        policies.append((name, build_policy(name, scores, starvation=guard if guarded else None)))
    rows = []
    bar = tqdm(total=len(points) * len(policies), desc="simulate", unit="run", disable=not progress)
    with bar:
        for arrivals, requests in points:
            for name, policy in policies:
                bar.set_postfix_str(f"{name} {arrivals.describe()}")
                row = run(requests, policy, config=config, cost=cost)
                rows.append(
                    {
                        "name": name,
                        "arrivals": arrivals.describe(),
                        "kind": arrivals.kind,
                        "rate": arrivals.rate,
                        **row,
                    }
                )
                bar.update()
    return rows


# ---- plots ----------------------------------------------------------------------------
_STATS = {"mean": "mean", "p90": "P90", "p50": "P50", "p99": "P99"}


def _latency(row: dict, stat: str) -> float:
    m = row["metrics"]
    v = None if m is None else m["per_token_latency"][stat]
    return math.nan if v is None else v


def plot_rates(rows: Sequence[dict], stat: str, path: str | Path, *, title: str = "") -> Path:
    """Per-token latency ``stat`` (mean, p50, p90, p99) against arrival rate, a line per policy."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    if stat not in _STATS:
        raise ValueError(f"stat must be one of {list(_STATS)}, got {stat!r}")
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    names = list(dict.fromkeys(r["name"] for r in rows))
    for name in names:
        pts = sorted(
            (r["rate"], _latency(r, stat)) for r in rows if r["name"] == name and r["rate"]
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xscale("log", base=2)
    rates = sorted({r["rate"] for r in rows if r["rate"]})
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel(f"{_STATS[stat]} per-token latency (s/token)")
    ax.set_title(title or f"{_STATS[stat]} per-token latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_burst(rows: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
    """Mean and P90 per-token latency of the burst runs, a pair of bars per policy."""
    import numpy as np
    from matplotlib.figure import Figure

    burst = [r for r in rows if r["kind"] == "burst"]
    if not burst:
        raise ValueError("no burst runs to plot")
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(burst))
    for i, stat in enumerate(("mean", "p90")):
        values = [_latency(r, stat) for r in burst]
        bars = ax.bar(x + (i - 0.5) * 0.4, values, width=0.4, label=_STATS[stat])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xticks(x, [r["name"] for r in burst])
    ax.set_ylabel("per-token latency (s/token)")
    ax.set_title(title or f"burst of {burst[0]['requests']} requests")
    ax.legend()
    fig.savefig(path, dpi=120)
    return Path(path)
