"""Scheduling policies as priorities on per-request state, shared by the simulator and vLLM.

A policy never sees an engine. The caller (the simulator, or the vLLM scheduler class) keeps
one :class:`Job` per live request, updates its token counts, and asks the policy two things:
score the jobs that just arrived (:meth:`Policy.on_arrival`, one batched call) and give a
job's priority (:meth:`Policy.priority`, lower runs first). :meth:`Policy.on_scheduled` lets
a policy account service (MLFQ). Ties always break by admission order (``Job.seq``), so
every policy is deterministic. Starvation prevention is a :class:`StarvationGuard` any policy
can carry; promoted jobs sort ahead of everything (see :meth:`Policy.sort_key`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hasten.serve.request import Request

#: Scores a batch of requests at once; one float per request, in order.
Scorer = Callable[[Sequence[Request]], Sequence[float]]


@dataclass(eq=False, slots=True)
class Job:
    """What a scheduler tracks about one live request (mutable; the caller owns it).

    ``computed`` counts tokens whose KV is in the cache; ``generated`` counts output tokens
    produced so far. A request must compute ``num_tokens = prompt + generated`` tokens before
    its next token comes out, so after a recompute preemption (``computed`` back to 0) the
    generated tokens are recomputed as part of the prompt, as vLLM V1 does.
    """

    request: Request
    #: Admission order; breaks every tie, so equal priorities run first-come first-served.
    seq: int
    #: Engine iteration at which the job was admitted.
    arrival_iteration: int = 0
    #: Predictor output (policy-specific meaning); set once by ``on_arrival``, never again.
    score: float | None = None
    generated: int = 0
    computed: int = 0
    #: Consecutive iterations in which the job was live but not scheduled.
    unscheduled: int = 0
    #: Scheduled iterations left in a starvation promotion; promoted while > 0.
    quantum_left: int = 0
    promotions: int = 0
    #: MLFQ queue (0 = top) and scheduled iterations attained at that level.
    level: int = 0
    attained: int = 0
    #: The engine's own object for this request (the simulator's track, vLLM's ``Request``).
    handle: Any = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def prompt_tokens(self) -> int:
        return self.request.prompt_tokens

    @property
    def num_tokens(self) -> int:
        """Tokens known so far (prompt and generated): what the KV cache must hold."""
        return self.request.prompt_tokens + self.generated

    @property
    def to_compute(self) -> int:
        """Tokens to compute before the next output token (1 while decoding)."""
        return self.num_tokens - self.computed

    @property
    def promoted(self) -> bool:
        return self.quantum_left > 0

    @property
    def remaining(self) -> int:
        """True output tokens still to generate (oracle knowledge; needs ``output_tokens``)."""
        return _true_length(self) - self.generated


def _true_length(job: Job) -> int:
    n = job.request.output_tokens
    if n is None:
        raise ValueError(
            f"request {job.id!r} has no output_tokens; oracle policies need recorded lengths "
            f"(use 'ltr' with a scorer for live requests)"
        )
    return n


def precomputed_scores(scores: Mapping[str, float]) -> Scorer:
    """A scorer that looks scores up by request id (predictions made offline)."""

    def score(requests: Sequence[Request]) -> list[float]:
        missing = [r.id for r in requests if r.id not in scores]
        if missing:
            raise KeyError(f"no precomputed score for request(s) {missing[:5]} (of {len(missing)})")
        return [float(scores[r.id]) for r in requests]

    return score


@dataclass(frozen=True)
class StarvationGuard:
    """Promote a job left unscheduled for ``threshold`` consecutive iterations.

    A promoted job sorts ahead of every unpromoted one for ``quantum`` *scheduled*
    iterations, then falls back to its policy priority. Both counts are in engine iterations,
    as in the paper (200 and 10). ``evicts``: whether a promoted job may evict running jobs
    for KV space (default, as the paper's strict order does; its vLLM V0 swapped them out)
    or only takes space as it frees up (see :func:`hasten.serve.batching.fill_batch`).
    """

    threshold: int = 200
    quantum: int = 10
    evicts: bool = True

    def __post_init__(self) -> None:
        for name in ("threshold", "quantum"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"StarvationGuard.{name} must be an int >= 1, got {v!r}")

    def promote(self, jobs: Iterable[Job]) -> list[Job]:
        """Promote the jobs whose wait reached the threshold; return them."""
        out = []
        for job in jobs:
            if job.quantum_left == 0 and job.unscheduled >= self.threshold:
                job.quantum_left = self.quantum
                job.promotions += 1
                out.append(job)
        return out


def count_iteration(
    jobs: Iterable[Job], scheduled: Collection[Job], sampled: Collection[Job] | None = None
) -> None:
    """Per-iteration bookkeeping every engine does the same way.

    ``scheduled`` jobs reset their wait; the other live ``jobs`` wait one iteration longer.
    A promotion quantum is spent only by the scheduled jobs that ``sampled`` an output token
    (default: all of them). In the paper's engine every scheduled iteration samples a
    token; with chunked prefill a prefill or recompute can span iterations, and a promoted
    job that spent its quantum on an unfinished recompute would be evicted by the next
    promoted one and start over: a livelock the simulator's random tests hit.
    """
    for job in jobs:
        job.unscheduled += 1
    for job in scheduled:
        job.unscheduled = 0
    for job in scheduled if sampled is None else sampled:
        if job.quantum_left > 0:
            job.quantum_left -= 1


@dataclass(frozen=True)
class Policy:
    """A priority over jobs: lower :meth:`priority` runs first, ties by admission order.

    Subclasses set ``name`` and implement :meth:`priority`; ``static`` says whether a job's
    priority can change after ``on_arrival`` (callers may cache it when it cannot).
    """

    name: ClassVar[str] = ""
    static: ClassVar[bool] = True

    starvation: StarvationGuard | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.starvation is not None and not isinstance(self.starvation, StarvationGuard):
            raise TypeError(
                f"{type(self).__name__}.starvation must be a StarvationGuard or None, got "
                f"{self.starvation!r} (make_policy also takes a (threshold, quantum) pair)"
            )

    def on_arrival(self, jobs: Sequence[Job]) -> None:
        """Score newly admitted jobs (all of one iteration in one call; never called twice)."""

    def priority(self, job: Job) -> float:
        raise NotImplementedError

    def on_scheduled(self, job: Job) -> None:
        """Account one scheduled iteration of ``job`` (after its tokens were updated)."""

    def sort_key(self, job: Job) -> tuple[bool, float, int]:
        """Promoted first, then priority, then admission order."""
        return (job.quantum_left == 0, self.priority(job), job.seq)

    def describe(self) -> str:
        guard = self.starvation
        extra = f" starvation={guard.threshold}/{guard.quantum}" if guard else ""
        return f"{self.name}{extra}"


@dataclass(frozen=True)
class FCFS(Policy):
    """First come, first served (stock vLLM): admission order only."""

    name: ClassVar[str] = "fcfs"

    def priority(self, job: Job) -> float:
        return 0.0


@dataclass(frozen=True)
class SJF(Policy):
    """Oracle shortest job first: the true total output length."""

    name: ClassVar[str] = "sjf"

    def on_arrival(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            job.score = float(_true_length(job))

    def priority(self, job: Job) -> float:
        return job.score  # type: ignore[return-value]


@dataclass(frozen=True)
class SRTF(Policy):
    """Oracle shortest remaining time first: true output tokens still to generate."""

    name: ClassVar[str] = "srtf"
    static: ClassVar[bool] = False

    def on_arrival(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            job.score = float(_true_length(job))

    def priority(self, job: Job) -> float:
        return job.score - job.generated  # type: ignore[operator]


def _score(scorer: Scorer | None, jobs: Sequence[Job], who: str) -> list[float]:
    if scorer is None:
        raise ValueError(f"policy {who!r} needs scorer=...: a callable or precomputed_scores({{}})")
    scores = list(scorer([j.request for j in jobs]))
    if len(scores) != len(jobs):
        raise ValueError(f"{who}: the scorer gave {len(scores)} scores for {len(jobs)} requests")
    out = [float(s) for s in scores]
    bad = [(j.id, s) for j, s in zip(jobs, out, strict=True) if not math.isfinite(s)]
    if bad:
        raise ValueError(f"{who}: non-finite scores {bad[:5]}")
    return out


@dataclass(frozen=True)
class LTR(Policy):
    """Learning to rank: the predictor's score, higher = shorter (as the ranker's labels).

    ``scorer`` is called once per iteration with every request admitted since the last one;
    scores are kept on the job and never recomputed.
    """

    name: ClassVar[str] = "ltr"

    scorer: Scorer | None = None

    def on_arrival(self, jobs: Sequence[Job]) -> None:
        if jobs:
            for job, s in zip(jobs, _score(self.scorer, jobs, self.name), strict=True):
                job.score = s

    def priority(self, job: Job) -> float:
        return -job.score  # type: ignore[operator]


@dataclass(frozen=True)
class Bucket(Policy):
    """Length-bucket classification (S3-style): predicted bucket, smaller = shorter.

    The scorer returns the predicted bucket index of each request (a whole number); equal
    buckets run in admission order.
    """

    name: ClassVar[str] = "bucket"

    scorer: Scorer | None = None

    def on_arrival(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        scores = _score(self.scorer, jobs, self.name)
        bad = [(j.id, s) for j, s in zip(jobs, scores, strict=True) if s != int(s) or s < 0]
        if bad:
            raise ValueError(f"bucket: scores must be bucket indices (whole, >= 0), got {bad[:5]}")
        for job, s in zip(jobs, scores, strict=True):
            job.score = s

    def priority(self, job: Job) -> float:
        return job.score  # type: ignore[return-value]


@dataclass(frozen=True)
class MLFQ(Policy):
    """FastServe-style multi-level feedback queue, counted in scheduled iterations.

    Level ``k`` (0 = top) has a quantum of ``quantum * growth**k`` scheduled iterations
    (a decode iteration is one output token); a job that uses up its level's quantum drops
    one level, and the last level keeps it. Within a level, admission order.

    ``entry="top"`` admits every job at level 0 (classic MLFQ, and the default: it needs no
    knowledge of the engine's speed). ``entry="prompt"`` is FastServe's skip-join: the
    prefill is worth ``ceil(prompt_tokens / prompt_tokens_per_iteration)`` iterations of
    service, and the job joins the highest level whose quantum covers it, so a long prompt
    does not block the top queue.
    """

    name: ClassVar[str] = "mlfq"
    static: ClassVar[bool] = False

    quantum: int = 8
    growth: int = 2
    levels: int = 6
    entry: str = "top"
    prompt_tokens_per_iteration: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("quantum", "growth", "levels", "prompt_tokens_per_iteration"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"MLFQ.{name} must be an int >= 1, got {v!r}")
        if self.entry not in ("top", "prompt"):
            raise ValueError(f"MLFQ.entry must be 'top' or 'prompt', got {self.entry!r}")

    def quantum_of(self, level: int) -> int:
        return self.quantum * self.growth**level

    def entry_level(self, request: Request) -> int:
        if self.entry == "top":
            return 0
        demand = math.ceil(request.prompt_tokens / self.prompt_tokens_per_iteration)
        for level in range(self.levels):
            if self.quantum_of(level) >= demand:
                return level
        return self.levels - 1

    def on_arrival(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            job.level = self.entry_level(job.request)
            job.attained = 0

    def on_scheduled(self, job: Job) -> None:
        job.attained += 1
        if job.attained >= self.quantum_of(job.level) and job.level < self.levels - 1:
            job.level += 1
            job.attained = 0

    def priority(self, job: Job) -> float:
        return float(job.level)


_POLICIES: dict[str, type[Policy]] = {p.name: p for p in (FCFS, SJF, SRTF, LTR, Bucket, MLFQ)}
#: Names that are a policy plus the paper's starvation guard (200/10) unless one is passed.
_GUARDED = {"ltr-starvation": "ltr"}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Add a policy class under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    _POLICIES[cls.name] = cls
    return cls


def policy_names() -> list[str]:
    return [*_POLICIES, *_GUARDED]


def make_policy(name: str, **kwargs) -> Policy:
    """Build a policy by name: ``make_policy("ltr", scorer=...)``.

    ``starvation`` may be a :class:`StarvationGuard`, a ``(threshold, quantum)`` pair,
    ``True`` for the paper's 200/10, or ``None``. ``"ltr-starvation"`` is ``"ltr"`` with
    the guard on by default.
    """
    base = _GUARDED.get(name, name)
    if base not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {policy_names()}")
    guard = kwargs.pop("starvation", StarvationGuard() if name in _GUARDED else None)
    if guard is True:
        guard = StarvationGuard()
    elif guard is False:
        guard = None
    elif isinstance(guard, tuple):
        guard = StarvationGuard(*guard)
    elif guard is not None and not isinstance(guard, StarvationGuard):
        raise TypeError(
            f"starvation must be a StarvationGuard, a (threshold, quantum) pair, True or None; "
            f"got {guard!r}"
        )
    cls = _POLICIES[base]
    known = {f.name for f in dataclasses.fields(cls)} - {"starvation"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"policy {name!r} takes no argument(s) {unknown}; it takes "
            f"{[*sorted(known), 'starvation']}"
        )
    return cls(starvation=guard, **kwargs)
