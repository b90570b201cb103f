"""The live-request table an engine keeps: admit, score once, rank, account each iteration."""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterator

from hasten.serve.policies import Job, Policy, count_iteration
from hasten.serve.request import Request


class LiveJobs:
    """Every live request (waiting, running, preempted) of one engine, under one policy.

    The per-iteration protocol, identical for the simulator and the vLLM scheduler:

    1. :meth:`add` each request as it arrives (no scoring yet);
    2. :meth:`rank` at the start of an iteration: scores everything added since the last
       call in **one** batched ``policy.on_arrival`` call, then sorts all live jobs;
    3. the engine fills its batch from that order (see :func:`hasten.serve.batching.fill_batch`)
       and updates ``computed`` / ``generated`` on the jobs it ran;
    4. :meth:`end_iteration` with the scheduled jobs and those that sampled a token:
       policy accounting, wait counters, starvation promotions;
    5. :meth:`remove` finished jobs.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._jobs: dict[str, Job] = {}
        self._pending: list[Job] = []
        self._next_seq = 0
        # Live jobs in rank order as of the last rank(), promotion aside. A static policy's
        # order never changes, so new jobs are inserted in place and nothing is re-sorted
        # (10k live requests would otherwise cost ~10 ms an iteration); a dynamic one
        # re-sorts, which timsort does in near-linear time on last iteration's order.
        self._order: list[Job] = []
        self._static: dict[Job, tuple[float, int]] | None = {} if policy.static else None
        self._promoted: set[Job] = set()

    def add(self, request: Request, iteration: int = 0) -> Job:
        if request.id in self._jobs:
            raise ValueError(f"request {request.id!r} is already live; ids must be unique")
        job = Job(request=request, seq=self._next_seq, arrival_iteration=iteration)
        self._next_seq += 1
        self._jobs[request.id] = job
        self._pending.append(job)
        return job

    def score_pending(self) -> list[Job]:
        """Score the jobs added since the last call (one batched call); return them."""
        jobs, self._pending = self._pending, []
        if not jobs:
            return jobs
        self.policy.on_arrival(jobs)
        if self._static is None:
            self._order.extend(jobs)
        else:
            keys = self._static
            for job in jobs:
                keys[job] = (self.policy.priority(job), job.seq)
                bisect.insort(self._order, job, key=keys.__getitem__)
        return jobs

    def rank(self) -> list[Job]:
        """Score new arrivals, then every live job in scheduling order (best first).

        The order is :meth:`Policy.sort_key`'s: promoted first, then priority, then seq.
        """
        self.score_pending()
        if self._static is None:
            self._order.sort(key=self.policy.sort_key)
            return list(self._order)
        if not self._promoted:
            return list(self._order)
        keys = self._static
        promoted = sorted(self._promoted, key=keys.__getitem__)
        return promoted + [job for job in self._order if job not in self._promoted]

    def end_iteration(
        self, scheduled: Collection[Job], sampled: Collection[Job] | None = None
    ) -> list[Job]:
        """Account one engine iteration; return the jobs promoted by the starvation guard.

        ``sampled`` are the scheduled jobs that produced an output token (default: all);
        only they spend promotion quantum (see :func:`~hasten.serve.policies.count_iteration`).
        """
        for job in scheduled:
            self.policy.on_scheduled(job)
        count_iteration(self._jobs.values(), scheduled, sampled)
        guard = self.policy.starvation
        if guard is None:
            return []
        # A promotion ends only by spending its quantum, which only scheduled jobs do.
        self._promoted.difference_update([job for job in scheduled if job.quantum_left == 0])
        promoted = guard.promote(self._jobs.values())
        self._promoted.update(promoted)
        return promoted

    def remove(self, request_id: str) -> Job:
        job = self._jobs.pop(request_id)
        if job in self._pending:
            self._pending.remove(job)
            return job
        self._order.remove(job)
        self._promoted.discard(job)
        if self._static is not None:
            del self._static[job]
        return job

    def get(self, request_id: str) -> Job | None:
        return self._jobs.get(request_id)

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self._jobs.values())

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._jobs
