"""``hasten bench serve``: replay a trace against one server, or FCFS and LTR servers in turn."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from hasten.serve.serve_cli import SERVE_POLICIES, add_server_args, serve_config

DEFAULT_LENGTHS = Path("traces/sharegpt-smollm2.jsonl")
DEFAULT_BURST = 200


def add_bench_commands(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks against real engines")
    cmds = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    p = cmds.add_parser(
        "serve",
        help="replay a trace against an OpenAI-compatible server and measure latencies",
        description="With --url: one run against that server. Without: start a server "
        "for each of --policies in turn (same model and options), run the same load "
        "against each, and compare. Recorded output lengths are forced (ignore_eos), so "
        "only scheduling differs between runs. Arguments after `--` go to vllm serve.",
    )
    p.add_argument("--url", default=None, help="an already running server (one run)")
    p.add_argument(
        "--policies",
        default="fcfs,ltr",
        help=f"servers to start in turn, comma-separated, from {list(SERVE_POLICIES)} "
        "(default fcfs,ltr; fcfs is vLLM's own scheduler)",
    )
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--served-model", default=None, help="model name to ask for (default: first)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per request (3600)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    wl = p.add_argument_group("workload")
    wl.add_argument("--trace", default="sharegpt", help="prompt trace (default sharegpt)")
    wl.add_argument(
        "--lengths",
        type=Path,
        default=DEFAULT_LENGTHS,
        help=f"recorded output lengths to force (default {DEFAULT_LENGTHS})",
    )
    wl.add_argument("--seed", type=int, default=0, help="seed of the arrival draws (0)")
    wl.add_argument(
        "--skip",
        type=int,
        default=0,
        help="leave out the trace's first N requests, e.g. those the ranker was trained on",
    )
    wl.add_argument(
        "--held-out",
        action="store_true",
        help="only requests in the rankers' held-out split (10%% of ids by hash): the "
        "packaged ranker never trained on them",
    )
    from hasten.serve.simulate_cli import add_arrival_args

    add_arrival_args(p, default_burst=DEFAULT_BURST)
    srv = p.add_argument_group("servers started (without --url)")
    add_server_args(srv)
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for vllm serve")
    p.set_defaults(func=_bench_serve)


def _policies(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SERVE_POLICIES]
    if not names or bad:
        raise ValueError(
            f"--policies {text!r}: unknown {bad or 'empty list'}; use names from "
            f"{list(SERVE_POLICIES)}, e.g. fcfs,ltr"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--policies {text!r} names a policy twice")
    return names


def select(workload, skip: int = 0, held_out_only: bool = False):
    """The workload's requests in the rankers' held-out split (if asked), then from ``skip`` on."""
    if held_out_only:
        from hasten.serve.rank_eval import held_out

        kept = tuple(r for r in workload.requests if held_out(r.id))
        if not kept:
            raise ValueError(f"--held-out: none of the {len(workload)} requests is held out")
        workload = dataclasses.replace(workload, requests=kept)
    if not 0 <= skip < len(workload):
        raise ValueError(f"--skip {skip} leaves nothing of {len(workload)} requests")
    return dataclasses.replace(workload, requests=workload.requests[skip:])


def _bench_serve(args) -> int:
    from hasten.serve.loadgen import LoadConfig, check_requests, run_load
    from hasten.serve.simulate_cli import _arrivals
    from hasten.serve.sweep import load_workload

    cfgs = []
    if not args.url:
        from hasten.serve.server import free_port

        # Validated now, before a minute of workload loading and server start-up.
        cfgs = [serve_config(args, p, port=free_port()) for p in _policies(args.policies)]
    workload = select(load_workload(args.trace, args.lengths), args.skip, args.held_out)
    if args.burst is None and args.rate is None and not args.replay:
        args.burst = min(DEFAULT_BURST, len(workload))
    requests, arrivals = _arrivals(args, workload)
    check_requests(requests)
    report = {
        "workload": {
            "trace": workload.trace,
            "lengths": workload.lengths,
            "requests": len(requests),
            "prompt_tokens": sum(r.prompt_tokens for r in requests),
            "output_tokens": sum(r.output_tokens for r in requests),
        },
        "arrivals": arrivals.describe(),
        "skipped": args.skip,
        "held_out": args.held_out,
        "host": _host(),
        "ranker": _ranker_quality(requests, cfgs, progress=not args.no_progress),
        "runs": [],
    }
    progress = not args.no_progress

    def load(url: str) -> dict:
        cfg = LoadConfig(
            url, model=args.served_model, endpoint=args.endpoint, timeout_s=args.timeout
        )
        before = os.getloadavg()
        run = run_load(requests, cfg, progress=progress)
        # Other work on the machine competes with server and client: keep a trace of it.
        run["load_average"] = {"before": before, "after": os.getloadavg()}
        return run

    if args.url:
        report["runs"].append({"policy": "as served", **load(args.url)})
    else:
        from hasten.serve.serve_cli import _cuda
        from hasten.serve.server import ServerProcess

        cuda = _cuda()
        logs = (args.out.parent if args.out else Path(".")) / "bench-serve-logs"
        for cfg in cfgs:
            print(f"starting the {cfg.policy} server on {cfg.url}", file=sys.stderr, flush=True)
            with ServerProcess(cfg, logs / f"{cfg.policy}.log", cuda=cuda) as server:
                run = load(cfg.url)
                run = {"policy": cfg.policy, "startup_s": server.startup_s, **run}
                run["server"] = _server_dict(cfg)
            report["runs"].append(run)
    report["comparison"] = compare(report["runs"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    print_report(report)
    return 0 if all(r["lost"] == 0 for r in report["runs"]) else 1


def _ranker_quality(requests, cfgs, *, progress: bool) -> dict | None:
    """Kendall tau-b of the servers' ranker on these requests (what ltr could gain)."""
    rankers = {c.ranker for c in cfgs if c.policy.startswith("ltr")}
    if len(rankers) != 1 or "prompt-length" in rankers:
        return None
    from hasten.serve.scorers import ranker_scores

    ranker = rankers.pop()
    if progress:
        print(f"scoring {len(requests)} prompts with ranker {ranker}", file=sys.stderr)
    table = ranker_scores(requests, ranker)
    return {"ranker": ranker, "tau_b": table.tau_b(requests), "n": len(requests)}


def _server_dict(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    d["model"] = d["model"] or "packaged SmolLM2-135M-Instruct"
    return d


def compare(runs: list[dict]) -> list[dict]:
    """Each run against the first: ratios of mean and P90 per-token latency (first / run)."""
    if not runs or runs[0]["metrics"] is None:
        return []
    base = runs[0]["metrics"]["per_token_latency"]
    rows = []
    for run in runs:
        m = run["metrics"]
        if m is None:
            rows.append({"policy": run["policy"], "mean_speedup": None, "p90_speedup": None})
            continue
        ptl = m["per_token_latency"]
        rows.append(
            {
                "policy": run["policy"],
                "mean_speedup": _ratio(base["mean"], ptl["mean"]),
                "p90_speedup": _ratio(base["p90"], ptl["p90"]),
            }
        )
    return rows


def _ratio(a, b):
    return None if a is None or not b else a / b


def _host() -> dict:
    import torch

    try:
        import vllm

        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = None
    from hasten import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vllm": vllm_version,
        "hasten": __version__,
        "commit": commit,
        "note": "the load generator runs on the same machine as the server",
    }


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def print_report(rep: dict) -> None:
    wl = rep["workload"]
    print(
        f"{wl['requests']} requests of {wl['trace']} (lengths {wl['lengths']}), "
        f"arrivals {rep['arrivals']}, {wl['output_tokens']:,} output tokens"
    )
    if rep.get("ranker"):
        r = rep["ranker"]
        print(f"ranker {r['ranker']}: tau-b {_fmt(r['tau_b'])} on these requests (n={r['n']})")
    head = f"{'policy':16}{'finished':>9}{'lost':>6}{'ptl mean':>10}{'ptl P90':>10}"
    head += f"{'TTFT mean':>11}{'TPOT mean':>11}{'e2e mean':>10}{'tok/s':>8}{'preempt':>9}"
    print(head)
    for run in rep["runs"]:
        m = run["metrics"] or {}

        def get(key, stat="mean", m=m):
            return (m.get(key) or {}).get(stat)

        print(
            f"{run['policy']:16}{run['finished']:>9}{run['lost']:>6}"
            f"{_fmt(get('per_token_latency')):>10}{_fmt(get('per_token_latency', 'p90')):>10}"
            f"{_fmt(get('ttft')):>11}{_fmt(get('tpot')):>11}{_fmt(get('latency')):>10}"
            f"{_fmt(m.get('tokens_per_s')):>8}{_fmt(m.get('preemptions')):>9}"
        )
        for err in run["errors"][:3]:
            print(f"  lost {err['id']}: {err['error']}")
    rows = rep.get("comparison") or []
    if len(rows) > 1:
        base = rows[0]["policy"]
        print(f"per-token latency, {base} / policy (higher = better than {base}):")
        for row in rows[1:]:
            mean, p90 = _fmt(row["mean_speedup"]), _fmt(row["p90_speedup"])
            print(f"  {row['policy']:14} mean {mean}x, P90 {p90}x")
    print("(seconds; ptl = per-token latency = end-to-end latency / output tokens)")
