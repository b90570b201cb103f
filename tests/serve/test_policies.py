"""Policies, the starvation guard and the live-job table: exact orders on hand-built jobs."""

from __future__ import annotations

import pytest

from hasten.serve.batching import fill_batch
from hasten.serve.live import LiveJobs
from hasten.serve.policies import (
    LTR,
    MLFQ,
    SRTF,
    Bucket,
    Job,
    StarvationGuard,
    count_iteration,
    make_policy,
    policy_names,
    precomputed_scores,
)
from hasten.serve.request import Request
from tests.serve.factories import make_requests


def _rank(policy, requests) -> list[str]:
    live = LiveJobs(policy)
    for r in requests:
        live.add(r)
    return [j.id for j in live.rank()]


class _CountingScorer:
    """Scores = -output length (higher = shorter), recording every call."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, requests):
        self.calls.append([r.id for r in requests])
        return [-float(r.output_tokens) for r in requests]


def test_registry_names_and_errors():
    assert set(policy_names()) >= {"fcfs", "sjf", "srtf", "ltr", "ltr-starvation", "bucket", "mlfq"}
    with pytest.raises(ValueError, match=r"unknown policy 'lifo'.*'fcfs'"):
        make_policy("lifo")
    with pytest.raises(TypeError, match=r"takes no argument\(s\) \['scorer'\].*starvation"):
        make_policy("fcfs", scorer=lambda rs: [0.0] * len(rs))
    with pytest.raises(TypeError, match="StarvationGuard"):
        make_policy("fcfs", starvation=200)
    # A scorer is needed only when there is something to score, and the error says so.
    with pytest.raises(ValueError, match="needs scorer="):
        _rank(make_policy("ltr"), make_requests([1]))


def test_starvation_options():
    assert make_policy("ltr").starvation is None
    assert make_policy("ltr-starvation").starvation == StarvationGuard(200, 10)
    assert make_policy("ltr-starvation", starvation=(5, 2)).starvation == StarvationGuard(5, 2)
    assert make_policy("fcfs", starvation=True).starvation == StarvationGuard()
    assert make_policy("ltr-starvation", starvation=None).starvation is None
    with pytest.raises(ValueError, match=r"threshold must be an int >= 1, got 0"):
        StarvationGuard(threshold=0)
    with pytest.raises(TypeError, match=r"LTR.starvation must be a StarvationGuard.*\(3, 2\)"):
        LTR(starvation=(3, 2))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fcfs", ["a", "b", "c", "d"]),
        ("sjf", ["b", "c", "d", "a"]),  # lengths 5, 1, 3, 3: the two 3s in arrival order
        ("srtf", ["b", "c", "d", "a"]),
        ("ltr", ["b", "c", "d", "a"]),
    ],
)
def test_static_orders(name, expected):
    reqs = make_requests([5, 1, 3, 3], ids="abcd")
    kwargs = {"scorer": _CountingScorer()} if name == "ltr" else {}
    assert _rank(make_policy(name, **kwargs), reqs) == expected


def test_ltr_higher_score_runs_first_and_ties_keep_arrival_order():
    reqs = make_requests([9, 9, 9, 9], ids="abcd")
    scores = precomputed_scores({"a": 0.5, "b": 2.0, "c": 0.5, "d": -1.0})
    assert _rank(LTR(scorer=scores), reqs) == ["b", "a", "c", "d"]
    with pytest.raises(KeyError, match=r"no precomputed score.*'d'"):
        _rank(LTR(scorer=precomputed_scores({"a": 1.0})), reqs[:1] + reqs[3:])


def test_ltr_rejects_bad_scores():
    reqs = make_requests([1, 2])
    with pytest.raises(ValueError, match="gave 1 scores for 2"):
        _rank(LTR(scorer=lambda rs: [1.0]), reqs)
    with pytest.raises(ValueError, match="non-finite"):
        _rank(LTR(scorer=lambda rs: [1.0, float("nan")]), reqs)


def test_bucket_orders_by_bucket_then_arrival_and_needs_whole_buckets():
    reqs = make_requests([9, 9, 9, 9], ids="abcd")
    buckets = precomputed_scores({"a": 2, "b": 0, "c": 2, "d": 1})
    assert _rank(Bucket(scorer=buckets), reqs) == ["b", "d", "a", "c"]
    with pytest.raises(ValueError, match="bucket indices"):
        _rank(Bucket(scorer=lambda rs: [0.5] * len(rs)), reqs)


def test_oracles_need_recorded_lengths():
    live_request = Request(id="x", prompt_tokens=3)
    with pytest.raises(ValueError, match=r"no output_tokens.*'ltr'"):
        _rank(make_policy("sjf"), [live_request])


def test_srtf_follows_generated_tokens():
    a, b = (Job(r, seq=i) for i, r in enumerate(make_requests([10, 6], ids="ab")))
    policy = SRTF()
    policy.on_arrival([a, b])
    assert sorted([a, b], key=policy.sort_key) == [b, a]
    a.generated = 5  # 5 left against b's 6
    assert sorted([a, b], key=policy.sort_key) == [a, b]


def test_scores_are_batched_per_iteration_and_never_recomputed():
    scorer = _CountingScorer()
    live = LiveJobs(LTR(scorer=scorer))
    reqs = make_requests([4, 2, 3, 1], ids="abcd")
    live.add(reqs[0])
    live.add(reqs[1])
    assert [j.id for j in live.rank()] == ["b", "a"]
    assert [j.id for j in live.rank()] == ["b", "a"]  # nothing new: no call
    live.add(reqs[2])
    live.add(reqs[3])
    assert [j.id for j in live.rank()] == ["d", "b", "c", "a"]
    assert scorer.calls == [["a", "b"], ["c", "d"]]


def test_count_iteration_and_guard_promote_after_threshold_for_a_quantum():
    jobs = [Job(r, seq=i) for i, r in enumerate(make_requests([9, 9], ids="ab"))]
    a, b = jobs
    guard = StarvationGuard(threshold=2, quantum=2)
    count_iteration(jobs, [a])
    assert (a.unscheduled, b.unscheduled) == (0, 1)
    assert guard.promote(jobs) == []
    count_iteration(jobs, [a])
    assert guard.promote(jobs) == [b]
    assert (b.quantum_left, b.promotions, b.promoted) == (2, 1, True)
    count_iteration(jobs, [a])  # promoted but not scheduled: the quantum is not spent
    assert guard.promote(jobs) == [] and b.quantum_left == 2
    count_iteration(jobs, [b])
    count_iteration(jobs, [b])
    assert (b.quantum_left, b.promoted, b.unscheduled) == (0, False, 0)


def test_only_sampling_spends_promotion_quantum():
    a, b = (Job(r, seq=i) for i, r in enumerate(make_requests([9, 9], ids="ab")))
    a.quantum_left = b.quantum_left = 2
    count_iteration([a, b], scheduled=[a, b], sampled=[b])  # a ran a prefill chunk only
    assert (a.quantum_left, b.quantum_left) == (2, 1)
    assert (a.unscheduled, b.unscheduled) == (0, 0)


@pytest.mark.parametrize("name", ["ltr", "mlfq"])  # a static and a dynamic policy
def test_promoted_jobs_rank_first_until_their_quantum_is_spent(name):
    kwargs = {"scorer": _CountingScorer()} if name == "ltr" else {}
    live = LiveJobs(make_policy(name, starvation=(1, 2), **kwargs))
    for r in make_requests([1, 2, 9], ids="abc"):
        live.add(r)
    assert [j.id for j in live.rank()] == ["a", "b", "c"]
    a, b, c = (live.get(i) for i in "abc")
    assert live.end_iteration([a, b]) == [c]  # one unscheduled iteration reaches threshold 1
    assert [j.id for j in live.rank()] == ["c", "a", "b"]
    assert live.end_iteration([c, a]) == [b]
    assert [j.id for j in live.rank()] == ["b", "c", "a"]  # both promoted: policy order
    # c has run its quantum of 2 and falls back; b has one iteration left; a waited and is
    # promoted too, so a and b are both promoted and go in policy order.
    assert live.end_iteration([c, b]) == [a]
    assert (a.quantum_left, b.quantum_left, c.quantum_left) == (2, 1, 0)
    assert [j.id for j in live.rank()] == ["a", "b", "c"]


def test_mlfq_demotes_after_each_quantum_and_stops_at_the_last_level():
    policy = MLFQ(quantum=2, growth=2, levels=3)
    job = Job(make_requests([100])[0], seq=0)
    policy.on_arrival([job])
    levels = []
    for _ in range(12):
        policy.on_scheduled(job)
        levels.append(job.level)
    # Quanta 2, 4, then the last level keeps it.
    assert levels == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]


def test_mlfq_skip_join_enters_by_prompt_length():
    policy = MLFQ(quantum=8, growth=2, levels=4, entry="prompt", prompt_tokens_per_iteration=256)
    enter = [
        policy.entry_level(r)
        for r in make_requests([1, 1, 1, 1], prompts=[100, 2048, 2049, 100_000])
    ]
    # Demands 1, 8, 9 and 391 iterations against quanta 8, 16, 32, 64.
    assert enter == [0, 0, 1, 3]
    assert MLFQ().entry_level(make_requests([1], prompts=100_000)[0]) == 0
    with pytest.raises(ValueError, match="entry must be 'top' or 'prompt'"):
        MLFQ(entry="prefill")


class _FreeKV:
    """Unlimited KV for batch-filling tests."""

    def free_blocks(self):
        return 1 << 30

    def blocks_held(self, job):
        return 0

    def blocks_needed(self, job, n):
        return 0

    def allocate(self, job, n):
        pass

    def evict(self, job):
        raise AssertionError("nothing should be evicted")


def test_fill_batch_stops_at_the_first_request_that_does_not_fit():
    jobs = [Job(r, seq=i) for i, r in enumerate(make_requests([1, 1, 1], prompts=[3, 3, 1]))]
    # Without chunking the second prompt (3) does not fit the 2 tokens left; the third (1)
    # would, but strict priority stops at the second.
    batch = fill_batch(jobs, _FreeKV(), token_budget=5, max_num_seqs=8, chunked_prefill=False)
    assert [(j.id, n) for j, n in batch.scheduled] == [("r0", 3)]
    # With chunking the second takes the 2 tokens left and the budget is spent.
    batch = fill_batch(jobs, _FreeKV(), token_budget=5, max_num_seqs=8)
    assert [(j.id, n) for j, n in batch.scheduled] == [("r0", 3), ("r1", 2)]
    batch = fill_batch(jobs, _FreeKV(), token_budget=100, max_num_seqs=2)
    assert [j.id for j in batch.jobs] == ["r0", "r1"]


class _TightKV:
    """One block per token, ``capacity`` blocks, tracking who holds what."""

    def __init__(self, capacity, held):
        self.capacity, self.held, self.evicted = capacity, dict(held), []

    def free_blocks(self):
        return self.capacity - sum(self.held.values())

    def blocks_held(self, job):
        return self.held.get(job.id, 0)

    def blocks_needed(self, job, n):
        return n

    def allocate(self, job, n):
        self.held[job.id] = self.held.get(job.id, 0) + n

    def evict(self, job):
        self.evicted.append(job.id)
        self.held.pop(job.id)


def test_a_promoted_job_evicts_only_when_the_guard_says_so():
    reqs = make_requests([5, 5, 5], prompts=[4, 1, 1])
    jobs = [Job(r, seq=i) for i, r in enumerate(reqs)]
    for j in jobs[1:]:
        j.computed = j.generated = 1  # r1, r2 decode: one new block each
    jobs[0].quantum_left = 10  # r0 is promoted and needs 4 blocks; 3 are free
    kv = _TightKV(5, {"r1": 1, "r2": 1})
    batch = fill_batch(jobs, kv, token_budget=100, max_num_seqs=8)
    assert batch.jobs == [jobs[0]] and kv.evicted == ["r2"]  # strict order: r0 evicts r2
    kv = _TightKV(5, {"r1": 1, "r2": 1})
    batch = fill_batch(jobs, kv, token_budget=100, max_num_seqs=8, promoted_evict=False)
    assert [j.id for j in batch.jobs] == ["r1", "r2"] and kv.evicted == []  # r0 waits
    # When only promoted jobs are left and none fits, waiting would stall: they evict.
    for j in jobs[1:]:
        j.quantum_left = 10
    kv = _TightKV(4, {"r1": 2, "r2": 2})
    batch = fill_batch(jobs, kv, token_budget=100, max_num_seqs=8, promoted_evict=False)
    assert batch.jobs == [jobs[0]] and kv.evicted == ["r2", "r1"]
