"""The learning-to-rank issue's simulated targets on the reference trace, with honest ranks.

    python benchmarks/ltr_targets.py --out benchmarks/results/ltr-targets.json

Predicted ranks come from ``hasten rank crossfit`` (every prompt scored by a frozen-encoder
head that never trained on it), so the whole trace can be offered, not only a 10% test
split. Runs the burst (FCFS, oracle SJF, LTR, LTR + starvation guard, MLFQ), synthetic data
generation (time until the first K finish; both samples of a prompt are offered as two
requests once the trace has them) and Poisson overload, on the H100-calibrated Llama-3-8B
cost model; prints a table and writes JSON. Bursts and offers larger than the trace are cut
to the trace's size and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import replace
from pathlib import Path

from hasten.serve.arrivals import burst, poisson
from hasten.serve.metrics import time_to_finish
from hasten.serve.policies import make_policy, precomputed_scores
from hasten.serve.rank_eval import noise_ceiling
from hasten.serve.rank_train import labelled_requests
from hasten.serve.scorers import load_scores
from hasten.serve.simulator import simulate
from hasten.serve.trace import load_reference_trace

POLICIES = ("fcfs", "sjf", "ltr", "ltr-starvation", "mlfq")


def _policy(name: str, scores: dict[str, float]):
    if name.startswith("ltr"):
        return make_policy(name, scorer=precomputed_scores(scores))
    return make_policy(name)


def _row(res) -> dict:
    m = res.metrics()
    return {
        "mean": m.per_token_latency.mean,
        "p90": m.per_token_latency.p90,
        "max_wait": m.max_wait.max,
        "duration": m.duration,
        "preemptions": m.preemptions,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=Path, default=Path("traces/sharegpt-smollm2.jsonl"))
    p.add_argument("--scores", type=Path, required=True, help="hasten rank crossfit output")
    p.add_argument("--burst", type=int, default=2000)
    p.add_argument("--offer", type=int, default=10_000)
    p.add_argument("--first", type=int, default=1000)
    p.add_argument("--rates", default="32,64")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    reqs = labelled_requests("sharegpt", args.lengths)
    table = load_scores(args.scores)
    scores = {r.id: table.values[r.id] for r in reqs}
    ceiling = noise_ceiling(load_reference_trace(args.lengths))
    report = {
        "lengths": str(args.lengths),
        "rows": len(reqs),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "ranker_tau_b": table.tau_b(reqs),
        "noise_ceiling": None if ceiling is None else {"tau_b": ceiling.tau_b, "n": ceiling.n},
        "cost_model": "llama3-8b-h100",
    }
    n = min(args.burst, len(reqs))
    report["burst"] = {"asked": args.burst, "offered": n, "runs": {}}
    for name in POLICIES:
        res = simulate(burst(reqs[:n]), _policy(name, scores))
        report["burst"]["runs"][name] = _row(res)

    # Synthetic data generation: every sample of every prompt is one request (same prompt,
    # so the same predicted score; its own recorded length).
    both = list(reqs)
    trace = load_reference_trace(args.lengths)
    for r in reqs:
        second = trace.get(r.id, {}).get(1)
        if second is not None:
            both.append(replace(r, id=f"{r.id}#1", output_tokens=second[1]))
    offer = both[: args.offer]
    k = min(args.first, len(offer))
    sdg = {"asked": args.offer, "offered": len(offer), "first": k, "runs": {}}
    for name in ("fcfs", "ltr"):
        s = {q.id: scores[q.id.split("#")[0]] for q in offer}
        res = simulate(burst(offer), _policy(name, s), stop_after=k)
        sdg["runs"][name] = {"time_to_first_k": time_to_finish(res.records, k)}
    report["synthetic_data_generation"] = sdg

    report["poisson"] = {}
    for rate in (float(x) for x in args.rates.split(",")):
        runs = {}
        for name in ("fcfs", "ltr", "ltr-starvation", "mlfq"):
            # The whole trace at this rate (161 s of arrivals at 32 req/s): long enough for
            # the queue of an overloaded engine to build up.
            res = simulate(poisson(reqs, rate, seed=0), _policy(name, scores), until=None)
            runs[name] = _row(res)
        report["poisson"][str(rate)] = runs

    b = report["burst"]["runs"]
    print(
        f"{report['rows']} trace rows; ranker tau-b {report['ranker_tau_b']:.3f}; "
        f"noise ceiling {report['noise_ceiling']}"
    )
    print(f"burst of {n}: per-token latency (s/token) and max wait (s)")
    for name, r in b.items():
        print(
            f"  {name:15s} mean {r['mean']:.4f}  p90 {r['p90']:.4f}  max wait {r['max_wait']:.1f}"
        )
    print(
        f"  FCFS / LTR mean: {b['fcfs']['mean'] / b['ltr']['mean']:.2f}x; "
        f"LTR / SJF: {b['ltr']['mean'] / b['sjf']['mean']:.2f}x"
    )
    f, ltr = (sdg["runs"][x]["time_to_first_k"] for x in ("fcfs", "ltr"))
    print(
        f"synthetic data generation, first {k} of {len(offer)}: FCFS {f:.1f} s, LTR {ltr:.1f} s "
        f"({f / ltr:.2f}x)"
    )
    for rate, runs in report["poisson"].items():
        cells = "  ".join(
            f"{n} {r['mean']:.3f}/{r['p90']:.3f}/{r['max_wait']:.0f}" for n, r in runs.items()
        )
        print(f"poisson {rate} req/s (mean/p90/max wait): {cells}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
