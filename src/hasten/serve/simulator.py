"""Discrete-event simulation of a continuous-batching engine under any scheduling policy.

Each iteration, as in the spec (``llm_scheduling.md`` section 2): admit what arrived by now
and score it in one batched call; rank every live request (promoted first, then the policy);
fill the batch in that order under the token budget and the sequence cap, stopping at the
first request that does not fit, evicting lowest-ranked KV holders when the cache is full;
run it for the cost model's time; update the starvation counters. An idle engine jumps to
the next arrival. Ranking, batch filling and counters are the shared code the vLLM
scheduler runs too (:mod:`hasten.serve.live`, :mod:`hasten.serve.batching`); only the KV
arithmetic and the clock are the simulator's own.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from hasten.serve.batching import fill_batch
from hasten.serve.costmodel import LLAMA3_8B_H100, BatchShape, CostModel
from hasten.serve.live import LiveJobs
from hasten.serve.metrics import Metrics, RequestRecord, summarize
from hasten.serve.policies import Job, Policy, make_policy
from hasten.serve.request import Request

PREEMPTION_MODES = ("recompute", "swap")
#: Iterations without a single output token after which a run is declared stuck.
_STALL_ITERATIONS = 100_000


@dataclass(frozen=True)
class SimConfig:
    """The engine's limits, named as in vLLM.

    ``token_budget`` is ``max_num_batched_tokens``; ``max_num_seqs`` caps the requests
    scheduled in one iteration (requests that keep KV but are not scheduled do not count);
    ``kv_capacity_tokens`` is the KV cache size (``None``: unlimited), allocated in blocks
    of ``block_size`` tokens. ``preemption="recompute"`` (vLLM V1) drops an evicted
    request's KV and recomputes prompt and generated tokens later; ``"swap"`` (the paper,
    on vLLM V0) keeps it on the CPU and pays ``CostModel.swap_token`` per token each way.
    """

    token_budget: int = 8192
    max_num_seqs: int = 256
    kv_capacity_tokens: int | None = None
    block_size: int = 16
    preemption: str = "recompute"
    chunked_prefill: bool = True

    def __post_init__(self) -> None:
        for name in ("token_budget", "max_num_seqs", "block_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"SimConfig.{name} must be an int >= 1, got {v!r}")
        cap = self.kv_capacity_tokens
        if cap is not None and (not isinstance(cap, int) or cap < self.block_size):
            raise ValueError(
                f"SimConfig.kv_capacity_tokens must be None (unlimited) or an int >= "
                f"block_size ({self.block_size}), got {cap!r}"
            )
        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(
                f"SimConfig.preemption must be one of {PREEMPTION_MODES}, got {self.preemption!r}"
            )

    @property
    def kv_capacity_blocks(self) -> int:
        if self.kv_capacity_tokens is None:
            return sys.maxsize
        return self.kv_capacity_tokens // self.block_size


@dataclass(frozen=True)
class IterationRecord:
    """One engine iteration (kept when ``simulate(..., log_iterations=True)``)."""

    index: int
    start: float
    seconds: float
    shape: BatchShape
    #: ``(request id, tokens computed)`` in rank order.
    scheduled: tuple[tuple[str, int], ...]
    evicted: tuple[str, ...]
    promoted: tuple[str, ...]
    live: int
    kv_blocks_used: int


@dataclass(frozen=True)
class SimResult:
    """Finished requests in completion order, the optional iteration log, the unfinished ids."""

    records: tuple[RequestRecord, ...]
    end_time: float
    num_iterations: int
    unfinished: tuple[str, ...] = ()
    iterations: tuple[IterationRecord, ...] | None = None

    def record(self, request_id: str) -> RequestRecord:
        for r in self.records:
            if r.id == request_id:
                return r
        raise KeyError(f"request {request_id!r} did not finish ({len(self.unfinished)} did not)")

    def completion_order(self) -> list[str]:
        return [r.id for r in self.records]

    def metrics(self) -> Metrics:
        return summarize(self.records)


@dataclass
class _Track:
    """The simulator's own per-request state (what a real engine knows on its own)."""

    last_served: float
    max_wait: float = 0.0
    first_token: float | None = None
    preemptions: int = 0
    swapped: bool = False


class _BlockSpace:
    """KV cache as block counts; a job holds ``ceil(computed / block_size)`` blocks."""

    def __init__(self, config: SimConfig) -> None:
        self.capacity = config.kv_capacity_blocks
        self.block_size = config.block_size
        self.recompute = config.preemption == "recompute"
        self.used = 0
        #: KV tokens moved between GPU and CPU in the current iteration (swap mode).
        self.swapped_tokens = 0

    def free_blocks(self) -> int:
        return self.capacity - self.used

    def blocks_held(self, job: Job) -> int:
        return 0 if job.handle.swapped else -(-job.computed // self.block_size)

    def blocks_needed(self, job: Job, num_tokens: int) -> int:
        return -(-(job.computed + num_tokens) // self.block_size) - self.blocks_held(job)

    def allocate(self, job: Job, num_tokens: int) -> None:
        self.used += self.blocks_needed(job, num_tokens)
        track = job.handle
        if track.swapped:
            self.swapped_tokens += job.computed
            track.swapped = False

    def evict(self, job: Job) -> None:
        self.used -= self.blocks_held(job)
        track = job.handle
        track.preemptions += 1
        if self.recompute:
            job.computed = 0
        else:
            self.swapped_tokens += job.computed
            track.swapped = True

    def release(self, job: Job) -> None:
        self.used -= self.blocks_held(job)


def _validate(requests: Sequence[Request], config: SimConfig) -> list[Request]:
    seen: set[str] = set()
    cap = config.kv_capacity_blocks
    for r in requests:
        if r.id in seen:
            raise ValueError(f"request id {r.id!r} appears twice; ids must be unique")
        seen.add(r.id)
        if r.output_tokens is None:
            raise ValueError(
                f"request {r.id!r} has no output_tokens; the simulator replays recorded lengths"
            )
        if r.prompt_tokens < 1:
            raise ValueError(
                f"request {r.id!r} has prompt_tokens={r.prompt_tokens}; the simulator needs "
                f">= 1 (tokenize the trace first)"
            )
        # The most KV a request ever holds: everything but its last token, which is sampled
        # and never fed back.
        peak = r.prompt_tokens + r.output_tokens - 1
        if -(-peak // config.block_size) > cap:
            raise ValueError(
                f"request {r.id!r} needs {peak} KV tokens, more than kv_capacity_tokens="
                f"{config.kv_capacity_tokens}; raise the capacity or drop the request"
            )
        if not config.chunked_prefill and peak > config.token_budget:
            raise ValueError(
                f"request {r.id!r} may need {peak} tokens in one iteration (prompt plus "
                f"recomputed output) but token_budget={config.token_budget}; raise it or "
                f"set chunked_prefill=True"
            )
    # Stable: simultaneous arrivals keep the trace's order (their admission order).
    return sorted(requests, key=lambda r: r.arrival)


def simulate(
    requests: Sequence[Request],
    policy: Policy | str,
    *,
    config: SimConfig | None = None,
    cost: CostModel | None = None,
    until: float | None = None,
    stop_after: int | None = None,
    log_iterations: bool = False,
) -> SimResult:
    """Run ``requests`` (with recorded ``output_tokens``) through the engine under ``policy``.

    ``cost`` defaults to :data:`~hasten.serve.costmodel.LLAMA3_8B_H100`. The run ends when
    every request has finished, at the first iteration starting at or after ``until``
    seconds, or once ``stop_after`` requests have finished (synthetic data generation needs
    only the first K).
    """
    policy = make_policy(policy) if isinstance(policy, str) else policy
    config = config or SimConfig()
    cost = cost or LLAMA3_8B_H100
    pending = _validate(requests, config)
    live = LiveJobs(policy)
    guard = policy.starvation
    kv = _BlockSpace(config)
    records: list[RequestRecord] = []
    log: list[IterationRecord] | None = [] if log_iterations else None

    t = 0.0
    iteration = 0
    nxt = 0
    # A healthy run samples a token at least every few iterations; a long prompt chunked
    # thinly can go longer, so the limit grows with the longest request.
    longest = max((r.prompt_tokens + r.output_tokens for r in pending), default=0)
    stall_limit = max(_STALL_ITERATIONS, 10 * longest)
    stalled = 0
    while True:
        while nxt < len(pending) and pending[nxt].arrival <= t:
            r = pending[nxt]
            live.add(r, iteration).handle = _Track(last_served=r.arrival)
            nxt += 1
        if not live:
            if nxt == len(pending):
                break
            t = pending[nxt].arrival  # idle: jump to the next arrival
            continue
        if until is not None and t >= until:
            break

        ranked = live.rank()
        kv.swapped_tokens = 0
        batch = fill_batch(
            ranked,
            kv,
            token_budget=config.token_budget,
            max_num_seqs=config.max_num_seqs,
            chunked_prefill=config.chunked_prefill,
            promoted_evict=guard is not None and guard.evicts,
        )
        # _validate guarantees the top job fits once everything below it is evicted.
        assert batch.scheduled, "no request could be scheduled"
        kv_used = kv.used
        shape = BatchShape.of((job.computed, n) for job, n in batch.scheduled)
        seconds = cost.iteration_time(shape) + cost.swap_time(kv.swapped_tokens)
        start, t = t, t + seconds

        sampled: list[Job] = []
        finished: list[Job] = []
        for job, n in batch.scheduled:
            track = job.handle
            track.max_wait = max(track.max_wait, start - track.last_served)
            track.last_served = t
            job.computed += n
            if job.computed == job.num_tokens:
                # The chunk reached the end of the known tokens: one token comes out.
                job.generated += 1
                sampled.append(job)
                if track.first_token is None:
                    track.first_token = t
                if job.generated == job.request.output_tokens:
                    finished.append(job)
        promoted = live.end_iteration(batch.jobs, sampled)
        stalled = 0 if sampled else stalled + 1
        if stalled > stall_limit:
            # Evictions undo progress faster than it is made (a policy whose order keeps
            # flipping under KV pressure). Fail loudly rather than spin forever.
            raise RuntimeError(
                f"no output token in {stalled} iterations at t={t:.3f}s with {len(live)} live "
                f"requests: the policy {policy.describe()!r} livelocks under this KV "
                f"capacity ({config.kv_capacity_tokens} tokens); raise it or use swap"
            )
        for job in finished:
            kv.release(job)
            live.remove(job.id)
            records.append(_record(job, t))
        if log is not None:
            log.append(
                IterationRecord(
                    index=iteration,
                    start=start,
                    seconds=seconds,
                    shape=shape,
                    scheduled=tuple((job.id, n) for job, n in batch.scheduled),
                    evicted=tuple(job.id for job in batch.evicted),
                    promoted=tuple(job.id for job in promoted),
                    live=len(live) + len(finished),
                    kv_blocks_used=kv_used,
                )
            )
        iteration += 1
        if stop_after is not None and len(records) >= stop_after:
            break

    unfinished = tuple(job.id for job in live) + tuple(r.id for r in pending[nxt:])
    return SimResult(
        records=tuple(records),
        end_time=t,
        num_iterations=iteration,
        unfinished=unfinished,
        iterations=tuple(log) if log is not None else None,
    )


def _record(job: Job, finish: float) -> RequestRecord:
    track: _Track = job.handle
    assert track.first_token is not None
    return RequestRecord(
        id=job.id,
        arrival=job.request.arrival,
        first_token=track.first_token,
        finish=finish,
        output_tokens=job.generated,
        prompt_tokens=job.prompt_tokens,
        preemptions=track.preemptions,
        promotions=job.promotions,
        max_wait=track.max_wait,
    )
