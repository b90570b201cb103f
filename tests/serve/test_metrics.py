"""Serving metrics on hand-built timelines."""

from __future__ import annotations

import math

import pytest

from hasten.serve.metrics import (
    RequestRecord,
    Summary,
    finished_within,
    summarize,
    time_to_finish,
)

RECORDS = [
    # id, arrival, first token, finish, output tokens
    RequestRecord("a", 0.0, 1.0, 4.0, 4, max_wait=0.5, preemptions=1),
    RequestRecord("b", 1.0, 2.0, 3.0, 2, max_wait=0.0),
    RequestRecord("c", 2.0, 6.0, 6.0, 1, max_wait=4.0),
]


def test_per_request_quantities():
    a, b, c = RECORDS
    assert (a.latency, a.per_token_latency, a.ttft, a.tpot) == (4.0, 1.0, 1.0, 1.0)
    assert (b.latency, b.per_token_latency, b.ttft, b.tpot) == (2.0, 1.0, 1.0, 1.0)
    assert (c.latency, c.per_token_latency, c.ttft, c.tpot) == (4.0, 4.0, 4.0, None)


def test_summary_by_hand():
    m = summarize(RECORDS)
    assert (m.requests, m.output_tokens, m.duration, m.preemptions) == (3, 7, 6.0, 1)
    # Per-token latency [1, 1, 4]: p90 at rank 1.8 of 0..2 is 1 + 0.8 * 3.
    assert m.per_token_latency == Summary(3, 2.0, 1.0, pytest.approx(3.4), pytest.approx(3.94), 4.0)
    assert m.ttft.mean == 2.0 and m.tpot.n == 2 and m.tpot.mean == 1.0
    assert m.max_wait.max == 4.0
    assert m.tokens_per_s == pytest.approx(7 / 6) and m.requests_per_s == 0.5


def test_synthetic_data_generation_metrics():
    assert time_to_finish(RECORDS, 1) == 3.0
    assert time_to_finish(RECORDS, 3) == 6.0
    assert time_to_finish(RECORDS, 2, start=1.0) == 3.0
    assert finished_within(RECORDS, 4.0) == 2
    assert finished_within(RECORDS, 5.99) == 2
    assert finished_within(RECORDS, 6.0) == 3
    with pytest.raises(ValueError, match="k=4 but 3 requests finished"):
        time_to_finish(RECORDS, 4)


def test_invalid_records_and_empty_runs():
    with pytest.raises(ValueError, match="arrival <= first_token <= finish"):
        RequestRecord("x", 2.0, 1.0, 3.0, 1)
    with pytest.raises(ValueError, match="no finished requests"):
        summarize([])
    assert math.isnan(Summary.of([]).mean)
