"""vLLM V1 scheduler class that runs a hasten policy: rank every live request, preempt for rank.

Use it with ``--scheduler-cls hasten.serve.vllm_scheduler.RankingScheduler`` (``hasten serve``
does) and configure it with the ``HASTEN_*`` variables of
:mod:`hasten.serve.engine_settings`. Written against vLLM 0.32 (its scheduler interface is
not public). The seam is narrow: before each ``Scheduler.schedule()`` the live requests are
ranked by the shared core (:class:`~hasten.serve.live.LiveJobs`, new arrivals scored in one
batched call), running requests that a better-ranked waiting one displaces are preempted
the way vLLM preempts (blocks freed, recompute), and ``running`` and the waiting queues are
put in rank order. vLLM then schedules as it always does: running requests first in that
order (under KV pressure it evicts the last, i.e. the lowest-ranked), then waiting ones until
the first that does not fit. Afterwards the iteration is accounted (starvation counters).
"""

from __future__ import annotations

import logging
import time

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request as EngineRequest
from vllm.v1.request import RequestStatus

from hasten.serve.batching import displacements
from hasten.serve.engine_settings import EngineSchedulerConfig
from hasten.serve.live import LiveJobs
from hasten.serve.prompt_text import PromptText
from hasten.serve.request import Request

# A child of vLLM's logger, so our lines share its handler and format in the engine process.
logger = logging.getLogger("vllm.hasten")

#: Waiting states a request can be admitted from now (others wait on grammars, KV, input).
_ADMISSIBLE = (RequestStatus.WAITING, RequestStatus.PREEMPTED)


class RankingScheduler(Scheduler):
    """vLLM's scheduler with its queues ordered, and running requests displaced, by a policy."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.scheduler_config.async_scheduling:
            raise ValueError(
                "RankingScheduler runs synchronously: preempting for rank needs every "
                "request's output of the last step; pass --no-async-scheduling"
            )
        if self.policy != SchedulingPolicy.FCFS:
            raise ValueError(
                f"--scheduling-policy {self.policy.value!r} reorders the waiting queue itself; "
                f"RankingScheduler orders it by HASTEN_POLICY: leave --scheduling-policy fcfs"
            )
        self.hasten = EngineSchedulerConfig.from_env()
        self.live = LiveJobs(self.hasten.build_policy(log=logger.warning))
        self.prompt_text: PromptText | None = None
        if self.hasten.uses_ranker:
            self.prompt_text = _prompt_text(self.vllm_config.model_config)
        self.iteration = 0
        #: Requests preempted to make room for better-ranked ones (not for KV space).
        self.displaced = 0
        logger.info("hasten RankingScheduler: %s", self.hasten.describe())

    # ---- requests in and out ------------------------------------------------------------
    def add_request(self, request: EngineRequest) -> None:
        # A known id is the next input chunk of a streaming session, not a new request.
        new = request.request_id not in self.requests
        super().add_request(request)
        if new and request.request_id in self.requests:
            job = self.live.add(self._describe(request), self.iteration)
            job.handle = request

    def _free_request(self, request: EngineRequest, delay_free_blocks: bool = False):
        # Every finished request passes here: stopped by the model, or aborted.
        out = super()._free_request(request, delay_free_blocks)
        if request.request_id in self.live:
            self.live.remove(request.request_id)
        return out

    def _describe(self, request: EngineRequest) -> Request:
        text = None
        if self.prompt_text is not None and request.prompt_token_ids is not None:
            try:
                text = self.prompt_text(request.prompt_token_ids)
            except Exception as e:
                # The ranker's fallback will rank it by prompt length; serve it anyway.
                logger.warning("could not decode the prompt of %s: %r", request.request_id, e)
        return Request(
            id=request.request_id,
            prompt=text or None,
            prompt_tokens=request.num_prompt_tokens,
            # The oracle policies' length; exact when the client forces it (ignore_eos).
            output_tokens=max(1, request.max_tokens),
        )

    # ---- one engine step ----------------------------------------------------------------
    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        self._rank_queues()
        output = super().schedule(throttle_prefills)
        self._end_iteration(output)
        return output

    def _rank_queues(self) -> None:
        live = self.live
        for job in live:
            job.generated = job.handle.num_output_tokens
            job.computed = job.handle.num_computed_tokens
        ranked = live.rank()
        running = {job for r in self.running if (job := live.get(r.request_id)) is not None}
        waiting = {
            job
            for r in self.waiting
            if r.status in _ADMISSIBLE and (job := live.get(r.request_id)) is not None
        }
        # The cap vLLM's admission loop checks; paused streaming sessions hold slots too.
        slots = self.max_num_active_reqs - self.num_waiting_for_streaming_input
        now = time.monotonic()
        for job in displacements(ranked, running, waiting, slots):
            victim = job.handle
            if not self._request_blocks_can_be_freed(victim):
                continue
            self.running.remove(victim)
            self._preempt_request(victim, now)
            self.displaced += 1
        position = {job.handle: i for i, job in enumerate(ranked)}
        rank = position.get
        # Requests the table does not know (none expected) keep their place at the front.
        self.running.sort(key=lambda r: rank(r, -1))
        for queue in (self.waiting, self.kv_holding_waiting):
            ordered = sorted(queue, key=lambda r: rank(r, -1))
            queue.clear()
            queue.extend(ordered)

    def _end_iteration(self, output: SchedulerOutput) -> None:
        live = self.live
        scheduled = [
            job for rid in output.num_scheduled_tokens if (job := live.get(rid)) is not None
        ]
        # A request samples a token when its chunk reached the end of its known tokens.
        sampled = [job for job in scheduled if not job.handle.is_prefill_chunk]
        for job in live.end_iteration(scheduled, sampled):
            logger.debug("promoted %s after %d unscheduled iterations", job.id, job.unscheduled)
        self.iteration += 1

    def shutdown(self) -> None:
        logger.info(
            "hasten RankingScheduler: %d iterations, %d displaced, %d still live",
            self.iteration,
            self.displaced,
            len(self.live),
        )
        super().shutdown()


def _prompt_text(model_config) -> PromptText | None:
    from vllm.tokenizers.registry import cached_tokenizer_from_config

    try:
        tokenizer = cached_tokenizer_from_config(model_config)
    except Exception as e:
        logger.warning("no tokenizer for the ranker (%r); ranking by prompt length", e)
        return None
    if tokenizer is None:
        logger.warning("the engine skips its tokenizer; the ranker falls back to prompt length")
        return None
    return PromptText(tokenizer)
