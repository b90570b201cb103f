"""The simulator on hand-built traces: every finish time and batch below is worked out by hand.

Unless a test says otherwise, each iteration takes 1 s (``ONE_SECOND``), prompts are one
token, KV blocks are one token, and a request with ``L`` output tokens needs ``L``
scheduled iterations (the first computes the prompt and samples token 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hasten.serve.costmodel import BatchShape, CostModel
from hasten.serve.metrics import time_to_finish
from hasten.serve.policies import LTR, StarvationGuard, make_policy, precomputed_scores
from hasten.serve.simulator import SimConfig, simulate
from tests.serve.factories import ONE_SECOND, engine, make_requests


def _run(requests, policy, **config):
    cfg = engine(**config)
    return simulate(requests, policy, config=cfg, cost=ONE_SECOND, log_iterations=True)


def _finish(result) -> dict[str, float]:
    return {r.id: r.finish for r in result.records}


# Burst of three with outputs 5, 1, 3 and one sequence at a time.
BURST = make_requests([5, 1, 3], ids="abc")


def test_burst_fcfs():
    res = _run(BURST, "fcfs", max_num_seqs=1)
    assert res.completion_order() == ["a", "b", "c"]
    assert _finish(res) == {"a": 5.0, "b": 6.0, "c": 9.0}
    assert {r.id: r.first_token for r in res.records} == {"a": 1.0, "b": 6.0, "c": 7.0}
    assert {r.id: r.max_wait for r in res.records} == {"a": 0.0, "b": 5.0, "c": 6.0}
    assert res.num_iterations == 9 and res.end_time == 9.0 and res.unfinished == ()


@pytest.mark.parametrize("name", ["sjf", "srtf", "ltr"])
def test_burst_shortest_first(name):
    kwargs = {"scorer": precomputed_scores({"a": 0.0, "b": 2.0, "c": 1.0})} if name == "ltr" else {}
    res = _run(BURST, make_policy(name, **kwargs), max_num_seqs=1)
    assert res.completion_order() == ["b", "c", "a"]
    assert _finish(res) == {"b": 1.0, "c": 4.0, "a": 9.0}
    assert {r.id: r.max_wait for r in res.records} == {"b": 0.0, "c": 1.0, "a": 4.0}


def test_burst_metrics_by_hand():
    fcfs = _run(BURST, "fcfs", max_num_seqs=1).metrics()
    # Per-token latency: a 5/5, b 6/1, c 9/3 -> [1, 6, 3].
    assert fcfs.per_token_latency.mean == pytest.approx(10 / 3, abs=1e-12)
    assert fcfs.per_token_latency.p50 == 3.0
    assert fcfs.per_token_latency.p90 == pytest.approx(3 + 0.8 * 3, abs=1e-12)  # sorted [1, 3, 6]
    assert fcfs.per_token_latency.max == 6.0
    assert fcfs.ttft.mean == pytest.approx((1 + 6 + 7) / 3, abs=1e-12)
    # TPOT: a (5 - 1) / 4, c (9 - 7) / 2; b has one token and no TPOT.
    assert (fcfs.tpot.n, fcfs.tpot.mean) == (2, 1.0)
    assert (fcfs.output_tokens, fcfs.duration, fcfs.tokens_per_s) == (9, 9.0, 1.0)
    assert fcfs.requests_per_s == pytest.approx(3 / 9, abs=1e-12)
    assert fcfs.max_wait.max == 6.0

    sjf = _run(BURST, "sjf", max_num_seqs=1).metrics()
    # b 1/1, c 4/3, a 9/5.
    assert sjf.per_token_latency.mean == pytest.approx((1 + 4 / 3 + 9 / 5) / 3, abs=1e-12)
    assert sjf.latency.mean == pytest.approx((1 + 4 + 9) / 3, abs=1e-12)


def test_short_request_arriving_behind_long_ones_runs_next_iteration():
    # a, b: 10 tokens at t=0; c: 2 tokens at t=2.5, admitted at the iteration starting at 3.
    reqs = make_requests([10, 10, 2], ids="abc", arrivals=[0, 0, 2.5])
    fcfs = _run(reqs, "fcfs", max_num_seqs=1)
    assert _finish(fcfs) == {"a": 10.0, "b": 20.0, "c": 22.0}
    ltr = LTR(scorer=precomputed_scores({"a": 0.0, "b": 0.0, "c": 1.0}))
    for policy in (make_policy("sjf"), ltr):
        res = _run(reqs, policy, max_num_seqs=1)
        # a runs 0-3, c 3-5 (it preempts a), a 5-12 (7 tokens left), then b.
        assert res.completion_order() == ["c", "a", "b"]
        assert _finish(res) == {"c": 5.0, "a": 12.0, "b": 22.0}
        assert res.record("c").max_wait == 0.5
        assert res.record("a").max_wait == 2.0
        # Paused, not evicted: the KV cache is unlimited.
        assert all(r.preemptions == 0 for r in res.records)
        assert res.iterations[3].scheduled == (("c", 1),)


def test_starvation_guard_promotes_a_long_request_after_n_iterations():
    # One long request L (2 tokens, worst score) and a stream of one-token requests, one
    # arriving every iteration, that keeps it out under plain LTR.
    ids = ["L", "s0", "s1", "s2", "s3", "s4"]
    reqs = make_requests([2, 1, 1, 1, 1, 1], ids=ids, arrivals=[0, 0, 0.5, 1.5, 2.5, 3.5])
    scores = precomputed_scores({"L": 0.0} | {f"s{i}": 1.0 for i in range(5)})

    plain = _run(reqs, LTR(scorer=scores), max_num_seqs=1)
    assert _finish(plain) == {"s0": 1, "s1": 2, "s2": 3, "s3": 4, "s4": 5, "L": 7}
    assert plain.record("L").max_wait == 5.0

    guarded = _run(reqs, make_policy("ltr", scorer=scores, starvation=(3, 2)), max_num_seqs=1)
    # L waits iterations 0, 1, 2; promoted at the end of iteration 2, it runs 3 and 4 (its
    # quantum of 2) and finishes at 5; s3 and s4 wait.
    assert [it.promoted for it in guarded.iterations][:4] == [(), (), ("L",), ()]
    assert [it.scheduled[0][0] for it in guarded.iterations] == [
        "s0", "s1", "s2", "L", "L", "s3", "s4"
    ]  # fmt: skip
    assert _finish(guarded) == {"s0": 1, "s1": 2, "s2": 3, "L": 5, "s3": 6, "s4": 7}
    assert guarded.record("L").max_wait == 3.0
    assert guarded.record("L").promotions == 1
    assert guarded.record("s4").max_wait == 2.5


def test_kv_capacity_evicts_the_lowest_ranked_and_recomputes():
    # Two requests of prompt 4 + output 4 in a 10-token cache: each holds up to 7 tokens.
    reqs = make_requests([4, 4], ids="ab", prompts=4)
    res = _run(reqs, "fcfs", kv_capacity_tokens=10)
    log = res.iterations
    assert [it.scheduled for it in log] == [
        (("a", 4), ("b", 4)),  # both prefill: 8 tokens cached
        (("a", 1), ("b", 1)),  # 10 cached: full
        (("a", 1),),  # a needs one more block: b (5 tokens) is evicted, and cannot come back
        (("a", 1),),  # a finishes (7 tokens); b needs 6 with 3 free
        (("b", 6),),  # b recomputes prompt + its 2 generated tokens, samples token 3
        (("b", 1),),
    ]
    assert [it.evicted for it in log] == [(), (), ("b",), (), (), ()]
    assert [it.kv_blocks_used for it in log] == [8, 10, 6, 7, 6, 7]
    assert _finish(res) == {"a": 4.0, "b": 6.0}
    b = res.record("b")
    assert (b.preemptions, b.output_tokens, b.first_token) == (1, 4, 1.0)
    assert log[4].shape == BatchShape(prefill_tokens=6, prefill_context=36)


def test_kv_capacity_with_swap_keeps_kv_and_pays_transfers():
    reqs = make_requests([4, 4], ids="ab", prompts=4)
    cost = CostModel(a=1.0, swap_token=0.1)
    cfg = engine(kv_capacity_tokens=10, preemption="swap")
    res = simulate(reqs, "fcfs", config=cfg, cost=cost, log_iterations=True)
    log = res.iterations
    # Iteration 2 swaps b's 5 tokens out (1.5 s); iteration 4 swaps them back in and
    # decodes (1.5 s) instead of recomputing 6 tokens.
    assert [it.scheduled for it in log] == [
        (("a", 4), ("b", 4)),
        (("a", 1), ("b", 1)),
        (("a", 1),),
        (("a", 1),),
        (("b", 1),),
        (("b", 1),),
    ]
    assert [it.seconds for it in log] == [1.0, 1.0, 1.5, 1.0, 1.5, 1.0]
    assert _finish(res) == {"a": 4.5, "b": 7.0}
    assert res.record("b").preemptions == 1


def test_eviction_skips_when_it_would_not_make_room():
    # b (ranked 2nd) arrives needing more KV than c (ranked 3rd) could free: b does not fit,
    # the batch stops there (c is not scheduled either), and c keeps its cache instead of
    # being evicted for nothing.
    reqs = make_requests([3, 1, 3], ids="abc", prompts=[5, 6, 1], arrivals=[0, 1, 0])
    ltr = LTR(scorer=precomputed_scores({"a": 2.0, "b": 1.0, "c": 0.0}))
    res = _run(reqs, ltr, kv_capacity_tokens=10)
    assert [it.scheduled for it in res.iterations] == [
        (("a", 5), ("c", 1)),  # 6 cached
        (("a", 1),),  # b needs 6 with 3 free, 4 if c went: stop
        (("a", 1),),  # a finishes with 7 cached
        (("b", 6), ("c", 1)),
        (("c", 1),),
    ]
    assert all(it.evicted == () for it in res.iterations)
    assert _finish(res) == {"a": 3.0, "b": 4.0, "c": 5.0}


def test_chunked_prefill_splits_a_long_prompt():
    res = _run(make_requests([2], prompts=10), "fcfs", token_budget=4)
    assert [it.scheduled for it in res.iterations] == [
        (("r0", 4),),
        (("r0", 4),),
        (("r0", 2),),
        (("r0", 1),),
    ]
    assert [it.shape for it in res.iterations] == [
        BatchShape(prefill_tokens=4, prefill_context=16),
        BatchShape(prefill_tokens=4, prefill_context=32),
        BatchShape(prefill_tokens=2, prefill_context=20),
        BatchShape(decode_seqs=1, decode_context=11),
    ]
    assert (res.records[0].first_token, res.records[0].finish) == (3.0, 4.0)


def test_chunked_prefill_shares_the_budget_with_decodes():
    # a: prompt 2, 3 tokens; b: prompt 10, 1 token; budget 4.
    reqs = make_requests([3, 1], ids="ab", prompts=[2, 10])
    res = _run(reqs, "fcfs", token_budget=4)
    assert [it.scheduled for it in res.iterations] == [
        (("a", 2), ("b", 2)),
        (("a", 1), ("b", 3)),
        (("a", 1), ("b", 3)),
        (("b", 2),),
    ]
    assert _finish(res) == {"a": 3.0, "b": 4.0}
    unchunked = _run(reqs, "fcfs", token_budget=11, chunked_prefill=False)
    # b's 10 tokens do not fit beside a's 2, then fit beside a's decode.
    assert [it.scheduled for it in unchunked.iterations][:2] == [(("a", 2),), (("a", 1), ("b", 10))]


def test_mlfq_demotes_a_long_request_below_a_new_short_one():
    # a: 8 tokens at t=0; b: 2 tokens at t=3.5. Quanta 2, 4, 8 iterations.
    reqs = make_requests([8, 2], ids="ab", arrivals=[0, 3.5])
    assert _finish(_run(reqs, "fcfs", max_num_seqs=1)) == {"a": 8.0, "b": 10.0}
    mlfq = make_policy("mlfq", quantum=2, growth=2, levels=3)
    res = _run(reqs, mlfq, max_num_seqs=1)
    # a spends level 0 in iterations 0-1 and is at level 1 when b enters level 0 at t=4.
    assert [it.scheduled[0][0] for it in res.iterations] == list("aaaabbaaaa")
    assert _finish(res) == {"b": 6.0, "a": 10.0}


def test_idle_engine_jumps_to_the_next_arrival():
    reqs = make_requests([2, 1], ids="ab", arrivals=[0.0, 7.25])
    res = _run(reqs, "fcfs")
    assert _finish(res) == {"a": 2.0, "b": 8.25}
    assert res.num_iterations == 3


def test_stop_after_and_until():
    reqs = make_requests([1, 2, 3, 4], ids="abcd")
    res = simulate(reqs, "fcfs", config=engine(max_num_seqs=1), cost=ONE_SECOND, stop_after=2)
    assert res.completion_order() == ["a", "b"] and res.unfinished == ("c", "d")
    assert time_to_finish(res.records, 2) == 3.0
    res = simulate(reqs, "fcfs", config=engine(max_num_seqs=1), cost=ONE_SECOND, until=6.0)
    assert res.completion_order() == ["a", "b", "c"] and res.unfinished == ("d",)


def test_invalid_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="no output_tokens"):
        simulate([dataclasses.replace(BURST[0], output_tokens=None)], "fcfs")
    with pytest.raises(ValueError, match=r"prompt_tokens=0.*tokenize"):
        simulate(make_requests([1], prompts=0), "fcfs")
    with pytest.raises(ValueError, match="appears twice"):
        simulate(BURST + BURST[:1], "fcfs")
    with pytest.raises(ValueError, match=r"needs 12 KV tokens.*kv_capacity_tokens=10"):
        simulate(make_requests([3], prompts=10), "fcfs", config=engine(kv_capacity_tokens=10))
    with pytest.raises(ValueError, match="chunked_prefill=True"):
        simulate(
            make_requests([1], prompts=10),
            "fcfs",
            config=engine(token_budget=8, chunked_prefill=False),
        )
    with pytest.raises(ValueError, match="preemption must be one of"):
        SimConfig(preemption="drop")
    with pytest.raises(ValueError, match="kv_capacity_tokens must be None"):
        SimConfig(kv_capacity_tokens=8, block_size=16)


def _random_trace(rng, n=60):
    outputs = rng.integers(1, 40, n)
    prompts = rng.integers(1, 50, n)
    arrivals = np.sort(rng.uniform(0, 20, n)).round(2)
    return make_requests(outputs.tolist(), prompts=prompts.tolist(), arrivals=arrivals.tolist())


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize(
    "name", ["fcfs", "srtf", "ltr-starvation", "ltr-starvation-no-evict", "mlfq", "bucket"]
)
def test_no_request_is_lost_or_duplicated_under_kv_pressure(name, preemption, seed):
    rng = np.random.default_rng(seed)
    reqs = _random_trace(rng)
    scores = {r.id: float(rng.normal()) for r in reqs}
    kwargs = {}
    if name == "ltr-starvation":
        kwargs = {"scorer": precomputed_scores(scores), "starvation": (4, 2)}
    elif name == "ltr-starvation-no-evict":
        name = "ltr"
        guard = StarvationGuard(4, 2, evicts=False)
        kwargs = {"scorer": precomputed_scores(scores), "starvation": guard}
    elif name == "bucket":
        kwargs = {
            "scorer": precomputed_scores({k: float(int(abs(v) * 3)) for k, v in scores.items()})
        }
    cfg = SimConfig(
        token_budget=24, max_num_seqs=6, kv_capacity_tokens=96, block_size=4, preemption=preemption
    )
    cost = CostModel(a=0.01, b_prefill=1e-3, b_decode=2e-3, c_decode_ctx=1e-5, swap_token=1e-4)
    res = simulate(reqs, make_policy(name, **kwargs), config=cfg, cost=cost, log_iterations=True)
    assert sorted(res.completion_order()) == sorted(r.id for r in reqs) and not res.unfinished
    by_id = {r.id: r for r in reqs}
    computed = dict.fromkeys(by_id, 0)
    for it in res.iterations:
        ids = [i for i, _ in it.scheduled]
        assert len(ids) == len(set(ids)) <= cfg.max_num_seqs
        assert 0 < sum(n for _, n in it.scheduled) <= cfg.token_budget
        assert it.kv_blocks_used <= cfg.kv_capacity_blocks
        for i, n in it.scheduled:
            computed[i] += n
    for rec in res.records:
        req = by_id[rec.id]
        assert rec.output_tokens == req.output_tokens and rec.arrival == req.arrival
        # Every token but the last is computed once, more only after a recompute eviction.
        floor = req.prompt_tokens + req.output_tokens - 1
        if preemption == "swap" or rec.preemptions == 0:
            assert computed[rec.id] == floor
        else:
            assert computed[rec.id] > floor
    assert sum(r.preemptions for r in res.records) > 0  # the cache really was under pressure


def test_cached_static_order_matches_a_full_sort_every_iteration(seed):
    """LiveJobs keeps static policies' order incrementally; a dynamic twin re-sorts."""

    @dataclasses.dataclass(frozen=True)
    class ResortedLTR(LTR):
        static = False

    rng = np.random.default_rng(seed)
    reqs = _random_trace(rng, n=80)
    scores = precomputed_scores({r.id: float(rng.integers(0, 5)) for r in reqs})
    cfg = SimConfig(token_budget=32, max_num_seqs=4, kv_capacity_tokens=128, block_size=4)
    guard = StarvationGuard(3, 2)
    a = simulate(reqs, LTR(scorer=scores, starvation=guard), config=cfg, cost=ONE_SECOND)
    b = simulate(reqs, ResortedLTR(scorer=scores, starvation=guard), config=cfg, cost=ONE_SECOND)
    assert a.records == b.records


def test_promotion_quantum_is_spent_only_on_sampled_tokens():
    """Regression: when a prefill chunk spent promotion quantum, this trace livelocked.

    Three long requests took turns being promoted for 2 iterations, each evicting the
    previous one before its 3-chunk recompute could finish (found by the random test).
    """
    rng = np.random.default_rng(7)
    reqs = _random_trace(rng)
    scores = precomputed_scores({r.id: float(rng.normal()) for r in reqs})
    cfg = SimConfig(token_budget=24, max_num_seqs=6, kv_capacity_tokens=96, block_size=4)
    cost = CostModel(a=0.01, b_prefill=1e-3, b_decode=2e-3, c_decode_ctx=1e-5)
    policy = LTR(scorer=scores, starvation=StarvationGuard(4, 2))
    res = simulate(reqs, policy, config=cfg, cost=cost, until=100.0)
    # Thrashes (recomputes are costly here) but finishes; the livelock ran 58k iterations.
    assert not res.unfinished and res.num_iterations < 2000
