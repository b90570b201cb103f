"""`hasten serve` and `hasten bench serve`: the command line, and a real server on a tiny Llama."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from hasten.cli import main
from hasten.serve.bench_cli import compare, select
from hasten.serve.loadgen import (
    LoadConfig,
    check_requests,
    preemptions_from_metrics,
    request_body,
    run_load,
)
from hasten.serve.ranker import DEFAULT_RANKER
from hasten.serve.request import Request
from hasten.serve.serve_cli import SCHEDULER_CLS, ServeConfig, vllm_command

REPO = Path(__file__).resolve().parents[2]
LENGTHS = REPO / "traces" / "sharegpt-smollm2.jsonl"


# ---- hasten serve -------------------------------------------------------------------------
def test_serve_command_runs_the_ranking_scheduler_synchronously():
    cfg = ServeConfig(policy="ltr", ranker="prompt-length", max_num_seqs=8, extra=("--seed", "1"))
    argv, env = vllm_command(cfg, "/models/m", cuda=False)
    assert argv[argv.index("--model") + 1] == "/models/m"
    assert argv[argv.index("--scheduler-cls") + 1] == SCHEDULER_CLS
    assert "--no-async-scheduling" in argv and argv[-2:] == ["--seed", "1"]
    assert argv[argv.index("--max-num-seqs") + 1] == "8"
    # On a CPU the KV cache gets a fixed size (vLLM's fraction would count host RAM).
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(2 << 30)
    assert env == {
        "HASTEN_POLICY": "ltr",
        "HASTEN_RANKER": "prompt-length",
        "HASTEN_STARVATION": "off",
    }


def test_serve_fcfs_is_vllms_own_scheduler():
    argv, env = vllm_command(ServeConfig(policy="fcfs"), "/m", cuda=True)
    assert "--scheduler-cls" not in argv and "--kv-cache-memory-bytes" not in argv
    assert env == {} and argv[argv.index("--served-model-name") + 1] == "smollm2-135m-instruct"


def test_serve_dry_run_prints_the_command(capsys):
    assert main(["serve", "--dry-run", "--policy", "ltr-starvation", "--", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "HASTEN_STARVATION=200/10" in out and SCHEDULER_CLS in out
    assert out.rstrip().endswith("--seed 3")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["serve", "--dry-run", "--ranker", "nope.pt"], "ranker 'nope.pt'"),
        (["serve", "--dry-run", "--starvation", "7"], "THRESHOLD/QUANTUM"),
        (["serve", "--dry-run", "--max-num-seqs", "0"], "max_num_seqs must be >= 1"),
        (["bench", "serve", "--policies", "fcfs,best"], r"unknown \['best'\]"),
        (["bench", "serve", "--policies", "ltr,ltr"], "names a policy twice"),
        (["bench", "serve", "--url", "http://127.0.0.1:9", "--skip", "99999"], "leaves nothing"),
    ],
)
def test_bad_command_lines_get_clear_errors(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hasten: error:")
    assert re.search(match, err), err


# ---- the load generator's pieces ----------------------------------------------------------
def test_held_out_keeps_exactly_the_requests_the_packaged_ranker_never_saw():
    from hasten.serve.rank_eval import held_out
    from hasten.serve.sweep import load_workload

    workload = load_workload("sharegpt", LENGTHS)
    kept = select(workload, held_out_only=True)
    assert kept.requests and all(held_out(r.id) for r in kept.requests)
    meta = json.loads(DEFAULT_RANKER.with_suffix(".json").read_text())
    assert len(kept) == len(workload) - meta["provenance"]["train"]["n_train"]
    assert select(workload, skip=3, held_out_only=True).requests == kept.requests[3:]


def test_request_body_forces_the_recorded_length():
    r = Request(id="a", prompt="Say hi.", prompt_tokens=3, output_tokens=17)
    chat = request_body(r, LoadConfig("http://h:1"), "m")
    assert chat["messages"] == [{"role": "user", "content": "Say hi."}]
    assert (chat["max_tokens"], chat["ignore_eos"], chat["stream"]) == (17, True, True)
    assert chat["stream_options"] == {"include_usage": True}
    plain = request_body(r, LoadConfig("http://h:1", endpoint="completions"), "m")
    assert plain["prompt"] == "Say hi." and "messages" not in plain


@pytest.mark.parametrize(
    ("requests", "match"),
    [
        ([], "no requests"),
        ([Request(id="a", prompt="x", output_tokens=1)] * 2, "'a' appears twice"),
        ([Request(id="a", prompt_tokens=5, output_tokens=1)], "no prompt text"),
        ([Request(id="a", prompt="x")], "no recorded output length"),
    ],
)
def test_requests_a_replay_cannot_send_are_refused(requests, match):
    with pytest.raises(ValueError, match=match):
        check_requests(requests)


def test_load_config_checks_its_fields():
    with pytest.raises(ValueError, match="http://"):
        LoadConfig("localhost:8000")
    with pytest.raises(ValueError, match="endpoint"):
        LoadConfig("http://h:1", endpoint="responses")
    assert LoadConfig("http://h:1/").url == "http://h:1"


def test_preemptions_are_summed_over_label_sets():
    text = (
        "# HELP vllm:num_preemptions_total x\n"
        'vllm:num_preemptions_total{engine="0",model_name="m"} 3.0\n'
        'vllm:num_preemptions_total{engine="1",model_name="m"} 2.0\n'
        "vllm:num_requests_running 1.0\n"
    )
    assert preemptions_from_metrics(text) == 5.0
    assert preemptions_from_metrics("vllm:other 1\n") is None


def test_compare_divides_the_first_runs_latency_by_each_runs():
    def run(policy, mean, p90):
        return {"policy": policy, "metrics": {"per_token_latency": {"mean": mean, "p90": p90}}}

    rows = compare([run("fcfs", 2.0, 6.0), run("ltr", 0.5, 3.0)])
    assert rows[1] == {"policy": "ltr", "mean_speedup": 4.0, "p90_speedup": 2.0}
    assert rows[0]["mean_speedup"] == 1.0


# ---- a real server --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_server(tiny_llm, tmp_path_factory):
    """`hasten serve`'s command for the tiny model, ltr with the prompt-length ranker."""
    if os.environ.get("CI") != "true":  # CI installs vLLM: there a missing one must fail
        pytest.importorskip("vllm")
    from hasten.serve.server import ServerProcess, free_port

    cfg = ServeConfig(
        model=str(tiny_llm),
        policy="ltr-starvation",
        ranker="prompt-length",
        port=free_port(),
        max_num_seqs=4,
        max_model_len=2048,
        kv_cache_gib=0.25,
        extra=("--enforce-eager",),
    )
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(cfg, log, startup_timeout=900) as server:
        yield server


def small_trace(tmp_path, n: int) -> tuple[Path, Path]:
    """ShareGPT prompts cut short and their recorded lengths capped at 64 tokens.

    The tiny model's 512-token tokenizer makes long prompts several thousand tokens.
    """
    from hasten.serve.sweep import load_workload

    requests = load_workload("sharegpt", LENGTHS).requests[400 : 400 + n]
    prompts, lengths = tmp_path / "prompts.jsonl", tmp_path / "lengths.jsonl"
    with prompts.open("w") as p, lengths.open("w") as ln:
        for r in requests:
            p.write(json.dumps({"id": r.id, "prompt": r.prompt[:300]}) + "\n")
            row = {"id": r.id, "sample": 0, "prompt_tokens": 0}
            ln.write(json.dumps({**row, "output_tokens": min(r.output_tokens, 64)}) + "\n")
    return prompts, lengths


def test_bench_replays_a_trace_against_the_server(tiny_server, tmp_path, capsys):
    out = tmp_path / "bench.json"
    prompts, lengths = small_trace(tmp_path, 8)
    argv = ["bench", "serve", "--url", tiny_server.cfg.url]
    argv += ["--trace", str(prompts), "--lengths", str(lengths)]
    argv += ["--burst", "8", "--out", str(out), "--no-progress"]
    code = main(argv)
    rep = json.loads(out.read_text())
    (run,) = rep["runs"]
    assert code == 0, run["errors"]
    assert (run["requests"], run["finished"], run["lost"]) == (8, 8, 0)
    assert rep["workload"]["output_tokens"] == sum(r["output_tokens"] for r in run["per_request"])
    for r in run["per_request"]:
        assert r["ok"] and r["output_tokens"] == r["expected_tokens"]
        assert 0 <= r["arrival"] <= r["first_token"] <= r["finish"]
    m = run["metrics"]
    assert m["requests"] == 8 and m["per_token_latency"]["mean"] > 0
    assert m["preemptions"] is not None  # read from the server's /metrics
    table = capsys.readouterr().out
    assert "as served" in table and "per-token latency" in table


def test_a_request_the_server_refuses_is_reported_lost_with_its_error(tiny_server):
    good = Request(id="good", prompt="hello world", output_tokens=5)
    # More tokens than max_model_len: vLLM answers 400.
    bad = Request(id="bad", prompt="hello world", output_tokens=5000)
    rep = run_load([good, bad], LoadConfig(tiny_server.cfg.url), progress=False)
    assert (rep["finished"], rep["lost"]) == (1, 1)
    (err,) = rep["errors"]
    assert err["id"] == "bad" and err["error"].startswith("HTTP 400")


def test_no_server_is_a_clear_error(tiny_server):
    from hasten.serve.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match="no OpenAI-compatible server"):
        run_load([Request(id="a", prompt="x", output_tokens=1)], LoadConfig(url), progress=False)


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path):
    from hasten.serve.server import ServerProcess, free_port

    empty = tmp_path / "not-a-model"
    empty.mkdir()
    cfg = ServeConfig(model=str(empty), policy="fcfs", port=free_port())
    with (
        pytest.raises(RuntimeError, match="exited with code"),
        ServerProcess(cfg, tmp_path / "log.txt", startup_timeout=600),
    ):
        pass


@pytest.mark.slow
def test_fcfs_and_ltr_servers_on_the_packaged_model(tmp_path):
    """The default model, both servers in turn, a small burst: nothing lost in either."""
    out = tmp_path / "cmp.json"
    argv = ["bench", "serve", "--policies", "fcfs,ltr", "--lengths", str(LENGTHS)]
    argv += ["--burst", "24", "--skip", "400", "--max-num-seqs", "4", "--max-model-len", "2048"]
    argv += ["--out", str(out), "--no-progress", "--", "--enforce-eager"]
    assert main(argv) == 0
    rep = json.loads(out.read_text())
    assert [r["policy"] for r in rep["runs"]] == ["fcfs", "ltr"]
    assert all(r["lost"] == 0 and r["finished"] == 24 for r in rep["runs"])
    assert rep["ranker"]["n"] == 24
