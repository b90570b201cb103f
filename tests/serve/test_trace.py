"""Trace loaders on the real shared data: counts, fields, round trips and clear errors."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from hasten.serve.request import Request
from hasten.serve.trace import (
    NAMED_TRACES,
    detect_format,
    join_lengths,
    load_azure_csv,
    load_jsonl,
    load_reference_trace,
    load_sharegpt_json,
    load_trace,
    save_jsonl,
    take,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DATA = SHARED / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared data not found at {DATA} (tests expect ../shared)"
)


@pytest.fixture(autouse=True)
def _data_env(monkeypatch):
    # Named traces resolve against the same folder the tests read.
    monkeypatch.setenv("HASTEN_DATA", str(DATA))


# ---- real data ------------------------------------------------------------------------
@needs_data
def test_sharegpt_prompts_jsonl():
    reqs = load_trace(DATA / "sharegpt/sharegpt_prompts.jsonl")
    assert len(reqs) == 5164
    assert len({r.id for r in reqs}) == 5164
    assert all(r.id.startswith("sharegpt-") and r.prompt for r in reqs)
    # Prompts only: no lengths known, nothing arrived yet.
    assert all(r.output_tokens is None and r.prompt_tokens == 0 for r in reqs)
    assert all(r.arrival == 0.0 for r in reqs)
    assert reqs[0].id == "sharegpt-wc1OQ5t_9"


@needs_data
def test_sharegpt_sample50_keeps_its_counts():
    reqs = load_trace("sharegpt-sample50")
    assert len(reqs) == 50
    rows = [json.loads(line) for line in (DATA / NAMED_TRACES["sharegpt-sample50"]).open()]
    for r, row in zip(reqs, rows, strict=True):
        assert (r.id, r.prompt) == (row["id"], row["prompt"])
        assert (r.prompt_tokens, r.output_tokens) == (row["prompt_tokens"], row["response_tokens"])


@needs_data
@pytest.mark.parametrize(
    "kind, rows, median_in, median_out, last_s",
    [("conv", 19366, 1020, 129, 3501.721937), ("code", 8819, 1469, 13, 3435.948056)],
)
def test_azure_csv(kind, rows, median_in, median_out, last_s):
    reqs = load_trace(f"azure-{kind}")
    assert len(reqs) == rows
    assert reqs[0].id == f"azure-{kind}-000000" and reqs[123].id == f"azure-{kind}-000123"
    arrivals = [r.arrival for r in reqs]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    # README: about 58 / 57 minutes; last minus first TIMESTAMP, to the microsecond.
    assert arrivals[-1] == pytest.approx(last_s, abs=1e-9)
    assert statistics.median(r.prompt_tokens for r in reqs) == median_in
    assert statistics.median(r.output_tokens for r in reqs) == median_out
    assert all(r.prompt is None for r in reqs)


@needs_data
def test_azure_first_rows_exact():
    reqs = load_trace("azure-conv")
    # 2023-11-16 18:15:46.6805900 -> 18:15:50.9951690 (microseconds kept).
    assert reqs[1].arrival == pytest.approx(4.314579, abs=1e-9)
    assert (reqs[0].prompt_tokens, reqs[0].output_tokens) == (374, 44)
    assert (reqs[1].prompt_tokens, reqs[1].output_tokens) == (396, 109)


@needs_data
def test_sharegpt_json_orig_files():
    orig = DATA / "sharegpt/orig"
    reqs = load_trace(orig / "ShareGPT_V3_filtered_500.json")
    assert len(reqs) == 500 and all(r.id.startswith("sharegpt-") for r in reqs)
    # 20 items open with no human turn and 1 with an empty one (data README): skipped.
    sg90k = orig / "sg_90k_part1_html_cleaned_lang_first_sampled_sorted.json"
    assert len(load_sharegpt_json(sg90k)) == 2978 - 20 - 1
    with pytest.raises(ValueError, match="strict=False"):
        load_sharegpt_json(sg90k, strict=True)
    # Same ids as the normalized JSONL, so recorded lengths join onto either.
    jsonl = {r.id: r.prompt for r in load_trace("sharegpt")}
    assert sum(jsonl.get(r.id) == r.prompt for r in reqs) >= 485


@needs_data
def test_sharegpt_sample_json_matches_jsonl():
    orig = load_trace(DATA / "sharegpt/orig/sharegpt_sample.json")
    assert orig == load_trace("sharegpt-sample50")


@needs_data
def test_named_traces_all_load_formats():
    assert {name: detect_format(DATA / p) for name, p in NAMED_TRACES.items()} == {
        "sharegpt": "prompts-jsonl",
        "sharegpt-sample50": "prompts-jsonl",
        "azure-conv": "azure-csv",
        "azure-code": "azure-csv",
    }


@needs_data
def test_round_trip_real_data(tmp_path):
    reqs = take(load_trace("sharegpt"), 300, seed=1) + take(load_trace("azure-code"), 300)
    path = tmp_path / "trace.jsonl"
    save_jsonl(reqs, path)
    assert detect_format(path) == "requests-jsonl"
    assert load_trace(path) == reqs


def test_azure_name_and_origin(tmp_path):
    path = tmp_path / "splitwise_conv.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 23:59:59.5000000,10,2\n"
        "2023-11-17 00:00:01.2500000,20,3"
    )
    assert [(r.id, r.arrival) for r in load_trace(path)] == [
        ("azure-conv-000000", 0.0),
        ("azure-conv-000001", 1.75),
    ]
    assert load_azure_csv(path, name="x")[1].id == "azure-x-000001"


# ---- round trip, join, take -----------------------------------------------------------
def _requests() -> list[Request]:
    return [
        Request("a", arrival=0.1 + 0.2, prompt="héllo 👋\nworld", prompt_tokens=5),
        Request("b", arrival=1 / 3, prompt_tokens=7, output_tokens=11),
        Request("c", arrival=2.0, prompt="x", prompt_token_ids=(1, 2, 3), prompt_tokens=3),
    ]


def test_save_load_round_trip_exact(tmp_path):
    reqs = _requests()
    save_jsonl(reqs, tmp_path / "r.jsonl")
    back = load_jsonl(tmp_path / "r.jsonl")
    assert back == reqs
    assert [r.arrival for r in back] == [0.1 + 0.2, 1 / 3, 2.0]  # bit-exact floats
    assert back[2].prompt_token_ids == (1, 2, 3)


def _write_lengths(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_join_lengths(tmp_path):
    lengths = _write_lengths(
        tmp_path / "lengths.jsonl",
        [
            {"id": "a", "sample": 0, "prompt_tokens": 4, "output_tokens": 10, "text": "..."},
            {"id": "a", "sample": 1, "prompt_tokens": 4, "output_tokens": 99},
            {"id": "b", "sample": 0, "prompt_tokens": 6, "output_tokens": 20},
            {"id": "zzz", "sample": 0, "prompt_tokens": 1, "output_tokens": 1},
        ],
    )
    table = load_reference_trace(lengths)
    assert table["a"] == {0: (4, 10), 1: (4, 99)}
    reqs = _requests()[:2]
    joined = join_lengths(reqs, lengths)
    assert [(r.id, r.prompt_tokens, r.output_tokens) for r in joined] == [
        ("a", 4, 10),
        ("b", 6, 20),
    ]
    assert joined[0].prompt == reqs[0].prompt and joined[0].arrival == reqs[0].arrival
    assert join_lengths(reqs, table) == joined
    with pytest.raises(ValueError, match=r"1 of 2 requests have no sample 1 .*missing='drop'"):
        join_lengths(reqs, lengths, sample=1)
    assert [r.output_tokens for r in join_lengths(reqs, table, sample=1, missing="drop")] == [99]
    with pytest.raises(ValueError, match="missing must be"):
        join_lengths(reqs, table, missing="skip")
    # A lengths file is not a trace on its own.
    with pytest.raises(ValueError, match="join_lengths"):
        load_trace(lengths)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"id": "a", "sample": 0, "prompt_tokens": 4}, "output_tokens must be an int >= 1"),
        ({"id": "a", "sample": -1, "prompt_tokens": 4, "output_tokens": 3}, "sample must be"),
        ({"sample": 0, "prompt_tokens": 4, "output_tokens": 3}, "no 'id'"),
        ({"id": "a", "sample": 0, "prompt_tokens": 4, "output_tokens": 0}, ">= 1, got 0"),
    ],
)
def test_reference_trace_bad_rows(tmp_path, row, message):
    path = _write_lengths(tmp_path / "l.jsonl", [row])
    with pytest.raises(ValueError, match=message):
        load_reference_trace(path)


def test_reference_trace_duplicate(tmp_path):
    row = {"id": "a", "sample": 0, "prompt_tokens": 4, "output_tokens": 3}
    path = _write_lengths(tmp_path / "l.jsonl", [row, row])
    with pytest.raises(ValueError, match=r"l.jsonl:2: id 'a' has sample 0 twice"):
        load_reference_trace(path)


def test_take():
    reqs = [Request(f"r{i}") for i in range(10)]
    assert take(reqs, 3) == reqs[:3]
    picked = take(reqs, 5, seed=7)
    assert picked == take(reqs, 5, seed=7)
    assert len({r.id for r in picked}) == 5
    assert [reqs.index(r) for r in picked] == sorted(reqs.index(r) for r in picked)
    with pytest.raises(ValueError, match="cannot take 11 requests from a trace of 10"):
        take(reqs, 11)


# ---- format errors --------------------------------------------------------------------
def test_unknown_extension(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"trace\.txt: unknown extension '\.txt'.*azure-csv"):
        load_trace(path)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"neither an existing file nor a named trace.*azure-conv"):
        load_trace("no-such-trace")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("t.csv", "a,b\n1,2\n", "lacks one of"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n", "no rows"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 x,1,2", "TIMESTAMP is not"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,5,0", "t.csv:2:"),
        ("t.json", '{"id": "a"}', "not an array"),
        ("t.json", '[{"conversations": []}]', "item 0: item has no 'id'"),
        ("t.jsonl", "", "no records"),
        ("t.jsonl", '{"foo": 1}\n', r"first record has keys \['foo'\]"),
        ("t.jsonl", '{"id": "a", "prompt": "p"}\n{oops\n', r"t.jsonl:2: not JSON"),
        ("t.jsonl", '{"id": "a", "prompt": "p"}\n{"id": "a", "prompt": "q"}\n', "more than once"),
        ("t.jsonl", '{"id": "a", "prompt": ""}\n', "non-empty string"),
        ("t.jsonl", '{"id": "a", "prompt": "p"}\n{"id": "b", "arrival": 1}\n', "mixed kinds"),
        ("t.jsonl", '{"id": "a", "arrival": 0, "colour": 1}\n', r"unknown fields \['colour'\]"),
        ("t.jsonl", '{"id": "a", "arrival": -1}\n', "arrival -1.0 is negative"),
        ("t.jsonl", "[1, 2]\n", "must be a JSON object"),
    ],
)
def test_bad_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_trace(path)
