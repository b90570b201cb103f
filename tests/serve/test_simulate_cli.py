"""``hasten simulate`` and ``hasten simulate compare`` on small hand-built traces."""

from __future__ import annotations

import json
import math
import sys

import pytest

from hasten.cli import main
from hasten.serve.costmodel import LLAMA3_8B_H100
from hasten.serve.metrics import finished_within, time_to_finish
from hasten.serve.scorers import load_scores, oracle_noise
from hasten.serve.simulator import SimConfig, simulate
from hasten.serve.trace import load_trace
from tests.serve.factories import make_requests

#: Longest first: FCFS serves them in the worst order, SJF in the best.
LONG_FIRST = [400, 300, 200, 100, 50, 20, 10, 5]


def _trace(tmp_path, outputs, *, name="trace.jsonl", prompt=True):
    """A JSONL prompt trace with recorded lengths (what ``sharegpt_sample50`` looks like)."""
    path = tmp_path / name
    with path.open("w") as f:
        for i, o in enumerate(outputs):
            row = {"id": f"r{i}", "prompt": f"prompt {i}", "prompt_tokens": 8 + i}
            if o is not None:
                row["output_tokens"] = o
            f.write(json.dumps(row) + "\n")
    return path


def _run_json(capsys, *argv) -> dict:
    assert main(["simulate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("policy", ["fcfs", "sjf"])
def test_simulate_json(tmp_path, capsys, policy):
    path = _trace(tmp_path, LONG_FIRST)
    rep = _run_json(capsys, "--trace", str(path), "--policy", policy)
    assert {
        "trace",
        "arrivals",
        "engine",
        "policy",
        "requests",
        "finished",
        "unfinished",
        "iterations",
        "metrics",
    } <= set(rep)
    assert rep["policy"] == policy
    assert rep["arrivals"] == "burst"
    assert rep["requests"] == rep["finished"] == len(LONG_FIRST)
    assert rep["unfinished"] == 0
    m = rep["metrics"]
    for key in ("per_token_latency", "ttft", "tpot", "max_wait", "latency"):
        assert set(m[key]) == {"n", "mean", "p50", "p90", "p99", "max"}, key
    assert m["output_tokens"] == sum(LONG_FIRST)
    assert m["tokens_per_s"] > 0 and m["preemptions"] == 0
    assert rep["engine"]["cost_model"] == LLAMA3_8B_H100.name
    # The same run through the library gives the same numbers.
    res = simulate(load_trace(path), policy, config=SimConfig())
    assert m["per_token_latency"]["mean"] == pytest.approx(res.metrics().per_token_latency.mean)


def test_simulate_table(tmp_path, capsys):
    path = _trace(tmp_path, LONG_FIRST)
    assert main(["simulate", "--trace", str(path), "--policy", "sjf"]) == 0
    out = capsys.readouterr().out
    for label in ("per-token latency", "TTFT", "TPOT", "max waiting time", "throughput"):
        assert label in out
    assert "preemptions" in out


def test_burst_sjf_beats_fcfs(tmp_path, capsys):
    path = _trace(tmp_path, LONG_FIRST)
    args = ("--trace", str(path), "--burst", str(len(LONG_FIRST)), "--max-seqs", "1")
    fcfs = _run_json(capsys, *args, "--policy", "fcfs")["metrics"]["per_token_latency"]
    sjf = _run_json(capsys, *args, "--policy", "sjf")["metrics"]["per_token_latency"]
    print(f"fcfs {fcfs['mean']:.4f} s/token, sjf {sjf['mean']:.4f} s/token")
    # One at a time, longest first: every short request waits behind all the long ones.
    assert sjf["mean"] < fcfs["mean"] / 3


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_ltr_with_exact_scores_is_sjf(tmp_path, capsys, suffix):
    path = _trace(tmp_path, LONG_FIRST)
    scores = {f"r{i}": -math.log(o) for i, o in enumerate(LONG_FIRST)}
    spath = tmp_path / f"scores{suffix}"
    if suffix == ".json":
        spath.write_text(json.dumps(scores))
    else:
        spath.write_text(
            "".join(json.dumps({"id": k, "score": v}) + "\n" for k, v in scores.items())
        )
    assert load_scores(spath).values == scores
    args = ("--trace", str(path), "--max-seqs", "2")
    ltr = _run_json(capsys, *args, "--policy", "ltr", "--scores", str(spath))
    sjf = _run_json(capsys, *args, "--policy", "sjf")
    assert ltr["metrics"] == sjf["metrics"]
    assert ltr["scores"]["score"]["synthetic"] is False
    assert ltr["scores"]["score"]["tau_b"] == pytest.approx(1.0)


def test_oracle_noise_is_labelled_synthetic(tmp_path, capsys):
    path = _trace(tmp_path, LONG_FIRST)
    args = ("--trace", str(path), "--max-seqs", "2")
    exact = _run_json(capsys, *args, "--policy", "ltr", "--oracle-noise", "0")
    assert exact["metrics"] == _run_json(capsys, *args, "--policy", "sjf")["metrics"]
    info = exact["scores"]["score"]
    assert info["synthetic"] is True and "SYNTHETIC" in info["source"]
    assert info["tau_b"] == pytest.approx(1.0)
    noisy = _run_json(capsys, *args, "--policy", "ltr-starvation", "--oracle-noise", "3")
    assert noisy["scores"]["score"]["tau_b"] < 1.0
    assert noisy["policy"] == "ltr starvation=200/10"
    assert main(["simulate", *args, "--policy", "ltr", "--oracle-noise", "0.5"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out


def test_oracle_noise_subsets_agree():
    reqs = make_requests([5, 50, 500, 7, 70], prompts=3)
    full = oracle_noise(reqs, 1.0, seed=3).values
    part = oracle_noise(reqs[:2], 1.0, seed=3).values
    assert part == {k: full[k] for k in part}
    buckets = oracle_noise(reqs, 0.0, "bucket").values
    assert buckets == {"r0": 2, "r1": 5, "r2": 8, "r3": 2, "r4": 6}  # floor(log2 length)


def test_oracle_noise_bucket_policy(tmp_path, capsys):
    path = _trace(tmp_path, LONG_FIRST)
    rep = _run_json(capsys, "--trace", str(path), "--policy", "bucket", "--oracle-noise", "0")
    assert rep["scores"]["bucket"]["kind"] == "bucket"
    assert rep["finished"] == len(LONG_FIRST)


def test_generation_mode(tmp_path, capsys):
    path = _trace(tmp_path, LONG_FIRST)
    args = ("--trace", str(path), "--policy", "sjf", "--max-seqs", "2")
    rep = _run_json(capsys, *args, "--first", "3", "--budget", "1.0")
    gen = rep["generation"]
    full = simulate(load_trace(path), "sjf", config=SimConfig(max_num_seqs=2))
    assert gen["time_to_first"] == pytest.approx(time_to_finish(full.records, 3))
    assert gen["finished_within_budget"] == finished_within(full.records, 1.0)
    first = _run_json(capsys, *args, "--first", "3")
    assert first["finished"] == 3 and first["unfinished"] == len(LONG_FIRST) - 3


def test_rate_and_replay(tmp_path, capsys):
    path = _trace(tmp_path, [10] * 12)
    rep = _run_json(capsys, "--trace", str(path), "--rate", "4", "--duration", "2")
    assert rep["requests"] == 8 and rep["arrivals"] == "poisson(rate=4, seed=0)"
    rep = _run_json(capsys, "--trace", str(path), "--rate", "4", "--cv", "2", "--num", "5")
    assert rep["requests"] == 5 and rep["arrivals"].startswith("gamma(rate=4, cv=2")
    err = _error(capsys, "simulate", "--trace", str(path), "--replay")
    assert "no arrival times" in err and "--rate" in err
    assert "--cv" in _error(capsys, "simulate", "--trace", str(path), "--cv", "2")
    assert "holds 12" in _error(capsys, "simulate", "--trace", str(path), "--burst", "13")


def test_compare_writes_plots_and_json(tmp_path, capsys):
    path = _trace(tmp_path, [5, 40, 300, 12, 80, 7, 150, 20, 9, 60])
    out = tmp_path / "cmp"
    argv = ["simulate", "compare", "--trace", str(path), "--policies", "fcfs,sjf,ltr"]
    argv += ["--rates", "2,4", "--duration", "2", "--burst", "10", "--oracle-noise", "0.5"]
    assert main([*argv, "--max-seqs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "per-token latency" in printed and "SYNTHETIC" in printed
    for name in ("per_token_latency_mean.png", "per_token_latency_p90.png", "burst.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    rep = json.loads((out / "compare.json").read_text())
    assert {"workload", "sweep", "engine", "scores", "runs"} <= set(rep)
    runs = rep["runs"]
    assert len(runs) == 3 * 3
    assert {(r["name"], r["arrivals"]) for r in runs} == {
        (p, a)
        for p in ("fcfs", "sjf", "ltr")
        for a in ("poisson(rate=2, seed=0)", "poisson(rate=4, seed=0)", "burst")
    }
    assert {r["requests"] for r in runs if r["rate"] == 2} == {4}
    assert all(r["finished"] == r["requests"] and r["metrics"] for r in runs)
    burst = {r["name"]: r["metrics"]["per_token_latency"]["mean"] for r in runs if not r["rate"]}
    assert burst["sjf"] <= burst["fcfs"]


def test_compare_without_burst(tmp_path, capsys):
    path = _trace(tmp_path, [5, 40, 300, 12])
    out = tmp_path / "cmp"
    argv = ["simulate", "compare", "--trace", str(path), "--policies", "fcfs,mlfq"]
    assert main([*argv, "--rates", "1", "--duration", "3", "--burst", "0", "--out", str(out)]) == 0
    assert (out / "per_token_latency_mean.png").exists() and not (out / "burst.png").exists()


def test_missing_lengths(tmp_path, capsys):
    path = _trace(tmp_path, [None, None, None])
    err = _error(capsys, "simulate", "--trace", str(path))
    assert "no output length" in err and "--lengths" in err
    # Recorded lengths joined by id; prompts without a row are left out.
    lengths = tmp_path / "lengths.jsonl"
    rows = [{"id": "r0", "sample": 0, "prompt_tokens": 5, "output_tokens": 9}]
    rows.append({"id": "r2", "sample": 0, "prompt_tokens": 6, "output_tokens": 3})
    lengths.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = _run_json(capsys, "--trace", str(path), "--lengths", str(lengths))
    assert rep["requests"] == 2 and rep["dropped_without_lengths"] == 1
    assert rep["metrics"]["output_tokens"] == 12


def test_bad_policy_names_the_valid_ones(tmp_path, capsys):
    path = _trace(tmp_path, LONG_FIRST)
    for argv in (
        ["simulate", "--trace", str(path), "--policy", "nope"],
        ["simulate", "compare", "--trace", str(path), "--policies", "fcfs,nope"],
    ):
        err = _error(capsys, *argv, *(["--out", str(tmp_path / "x")] if "compare" in argv else []))
        assert "'nope'" in err
        for valid in ("fcfs", "sjf", "ltr", "ltr-starvation", "mlfq"):
            assert f"'{valid}'" in err


def test_scorer_errors(tmp_path, capsys, monkeypatch):
    path = _trace(tmp_path, LONG_FIRST)
    base = ("simulate", "--trace", str(path), "--policy", "ltr")
    err = _error(capsys, *base)
    assert "--scores" in err and "--oracle-noise" in err and "--ranker" in err
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"r0": 1.0}))
    assert "7 of 8 requests have no score" in _error(capsys, *base, "--scores", str(partial))
    # Without the ranker module the option fails with a way out, not a traceback.
    monkeypatch.setitem(sys.modules, "hasten.serve.ranker", None)
    err = _error(capsys, *base, "--ranker", "default")
    assert "--ranker needs hasten.serve.ranker" in err and "--oracle-noise" in err
