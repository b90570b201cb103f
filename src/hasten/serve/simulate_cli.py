"""``hasten simulate`` and ``hasten simulate compare``: scheduling policies, simulated."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hasten.serve.sweep import DEFAULT_BURST, DEFAULT_TRACE

_SIMULATE_HELP = f"""\
Replay a trace with recorded output lengths through the simulated continuous-batching
engine under one scheduling policy, and print latency metrics.

With no options it runs the first {DEFAULT_BURST:,} requests of the Azure LLM conversation
trace ({DEFAULT_TRACE}: one hour of production chat traffic with prompt and output token
counts and arrival times, from the shared data folder) offered at once (the paper's burst),
under FCFS, on Llama-3-8B / one H100 (the packaged calibrated cost model). It needs no GPU
and no download. Azure traces carry no prompt text: 'ltr' and 'bucket' there need --scores
or --oracle-noise; the learned ranker (--ranker) needs a prompt trace such as
'--trace sharegpt --lengths traces/sharegpt-smollm2.jsonl'.

Requests are the first N of the trace, in file order. Latencies are per output token
(end-to-end latency / output tokens, s/token), as in the paper.
"""

_COMPARE_HELP = """\
Run every policy at every Poisson arrival rate (rate x duration requests each, as the
paper's 60 s runs) and once in a burst, on the same requests, arrivals and scores.
Writes DIR/compare.json and plots: DIR/per_token_latency_mean.png and
DIR/per_token_latency_p90.png (against rate, log y) and DIR/burst.png.
Put all options after 'compare'.
"""


# ---- argument parsing -----------------------------------------------------------------
def _csv(cast):
    def parse(text: str) -> tuple:
        try:
            return tuple(cast(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list like 2,4,8, got {text!r}"
            ) from None

    return parse


def _starvation(text: str) -> tuple[int, int] | bool:
    if text.lower() in ("off", "none", "0"):
        return False
    try:
        n, m = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N,M (e.g. 200,10: promote after N unscheduled iterations for M "
            f"scheduled ones) or 'off', got {text!r}"
        ) from None
    return (n, m)


def _common_args(p: argparse.ArgumentParser) -> None:
    from hasten.serve.costmodel import cost_model_names

    data = p.add_argument_group("workload")
    data.add_argument(
        "--trace",
        default=DEFAULT_TRACE,
        help=f"trace file or shared data name (default {DEFAULT_TRACE}; also azure-code, "
        "sharegpt, sharegpt-sample50, or a .jsonl/.json/.csv file)",
    )
    data.add_argument(
        "--lengths",
        type=Path,
        default=None,
        help="recorded lengths to join onto the trace (JSONL rows id, sample, prompt_tokens, "
        "output_tokens, e.g. traces/sharegpt-smollm2.jsonl); prompts without a sample-0 "
        "row are left out",
    )
    data.add_argument(
        "--seed", type=int, default=0, help="seed of the arrival draws and of --oracle-noise (0)"
    )

    pred = p.add_argument_group("predictions for ltr / bucket (one of)")
    src = pred.add_mutually_exclusive_group()
    src.add_argument(
        "--scores",
        type=Path,
        default=None,
        help="precomputed predictions: .json {id: score} or [{id, score}], or .jsonl rows "
        "{id, score}; higher = shorter for ltr, a bucket index for bucket",
    )
    src.add_argument(
        "--ranker",
        default=None,
        metavar="PATH|default",
        help="score prompts with a saved ranker (.pt) or the packaged one ('default'); "
        "needs prompt text and torch",
    )
    src.add_argument(
        "--oracle-noise",
        type=float,
        default=None,
        metavar="SIGMA",
        help="SYNTHETIC scores for demos and tests: -log(true length) + N(0, SIGMA); "
        "0 ranks as the true lengths; on azure-conv 0.5-0.8 gives tau-b 0.63-0.51, the "
        "paper's rankers' range (the tau-b reached is printed)",
    )

    eng = p.add_argument_group("engine")
    eng.add_argument("--token-budget", type=int, default=8192, help="max_num_batched_tokens (8192)")
    eng.add_argument("--max-seqs", type=int, default=256, help="max_num_seqs (256)")
    eng.add_argument(
        "--kv-tokens",
        type=int,
        default=None,
        help="KV cache capacity in tokens (default: unlimited, no KV pressure)",
    )
    eng.add_argument(
        "--preemption",
        choices=("recompute", "swap"),
        default="recompute",
        help="what eviction does: recompute (vLLM V1, default) or swap (the paper, vLLM V0)",
    )
    eng.add_argument(
        "--cost-model",
        choices=cost_model_names(),
        default="llama3-8b-h100",
        help="iteration-time model (default llama3-8b-h100)",
    )


def add_arrival_args(p: argparse.ArgumentParser, *, default_burst: int) -> None:
    """The arrival options :func:`_arrivals` reads (``simulate`` and ``bench serve``)."""
    arr = p.add_argument_group("arrivals (one of; default --burst)")
    when = arr.add_mutually_exclusive_group()
    when.add_argument("--rate", type=float, default=None, help="Poisson arrivals at R requests/s")
    when.add_argument(
        "--burst",
        type=int,
        default=None,
        metavar="N",
        help=f"the first N requests at t=0 (default {default_burst:,}, or the whole trace "
        "when shorter)",
    )
    when.add_argument("--replay", action="store_true", help="the trace's recorded arrival times")
    arr.add_argument(
        "--cv",
        type=float,
        default=None,
        help="with --rate: gamma arrivals of this CV (1 = Poisson)",
    )
    arr.add_argument(
        "--duration",
        type=float,
        default=None,
        help="--rate: offer rate x duration requests (default 60 s); --replay: only "
        "requests arriving in the first D seconds (default: all)",
    )
    arr.add_argument(
        "--num", type=int, default=None, help="with --rate or --replay: at most N requests"
    )
    arr.add_argument(
        "--speedup", type=float, default=1.0, help="with --replay: divide arrival times by S"
    )


def add_simulate_commands(sub: argparse._SubParsersAction) -> None:
    from hasten.serve.policies import policy_names

    names = ", ".join(policy_names())
    s = sub.add_parser(
        "simulate",
        help="replay a trace through the simulated engine under a scheduling policy",
        description=_SIMULATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--policy", default="fcfs", help=f"one of: {names} (default fcfs)")
    _common_args(s)
    add_arrival_args(s, default_burst=DEFAULT_BURST)
    s.add_argument(
        "--starvation",
        type=_starvation,
        default=None,
        metavar="N,M|off",
        help="starvation guard: promote a request unscheduled for N iterations for M "
        "scheduled ones (ltr-starvation defaults to 200,10; others to off)",
    )
    gen = s.add_argument_group("synthetic data generation")
    gen.add_argument(
        "--first", type=int, default=None, metavar="K", help="report seconds until K finish"
    )
    gen.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="report how many finish within SECONDS",
    )
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=_simulate)

    cmds = s.add_subparsers(dest="simulate_command", metavar="SUBCOMMAND")
    c = cmds.add_parser(
        "compare",
        help="sweep policies over arrival rates and a burst; write JSON and plots",
        description=_COMPARE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "--policies",
        type=_csv(str),
        default=("fcfs", "ltr", "ltr-starvation", "mlfq", "sjf"),
        help=f"comma-separated, from: {names} (default fcfs,ltr,ltr-starvation,mlfq,sjf)",
    )
    c.add_argument(
        "--rates",
        type=_csv(float),
        default=(2, 4, 8, 16, 32, 64),
        help="Poisson rates in requests/s (default 2,4,8,16,32,64)",
    )
    c.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per rate (60)")
    c.add_argument(
        "--burst",
        type=int,
        default=DEFAULT_BURST,
        metavar="N",
        help=f"also run the first N requests at t=0 (default {DEFAULT_BURST:,}; 0 skips)",
    )
    c.add_argument(
        "--cv", type=float, default=None, help="gamma arrivals of this CV instead of Poisson"
    )
    c.add_argument(
        "--starvation",
        type=_starvation,
        default=None,
        metavar="N,M|off",
        help="guard of the policies that carry one (ltr-starvation: 200,10)",
    )
    _common_args(c)
    c.add_argument("--out", type=Path, required=True, help="folder for compare.json and PNGs")
    c.add_argument("--json", action="store_true", help="also print the report as JSON")
    c.set_defaults(func=_compare)


# ---- shared set-up --------------------------------------------------------------------
def _engine(args):
    from hasten.serve.costmodel import cost_model
    from hasten.serve.simulator import SimConfig

    config = SimConfig(
        token_budget=args.token_budget,
        max_num_seqs=args.max_seqs,
        kv_capacity_tokens=args.kv_tokens,
        preemption=args.preemption,
    )
    return config, cost_model(args.cost_model)


def _score_tables(args, workload, requests, kinds) -> dict:
    """One table per kind of prediction the policies need, covering ``requests``."""
    from hasten.serve import scorers

    given = args.scores or args.ranker or args.oracle_noise is not None
    if given and not kinds:
        print(
            "note: no policy here uses predictions; --scores/--ranker/--oracle-noise ignored",
            file=sys.stderr,
        )
    if not given:
        return {}  # build_policy says what to pass, if a policy needs it
    tables = {}
    for kind in kinds:
        if args.scores:
            table = scorers.load_scores(args.scores, kind)
        elif args.ranker:
            table = scorers.ranker_scores(requests, args.ranker, kind)
        else:
            # Drawn over the whole trace so a request's noise does not depend on N.
            table = scorers.oracle_noise(workload.requests, args.oracle_noise, kind, seed=args.seed)
        table.check_covers(requests)
        tables[kind] = table
    return tables


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


# ---- hasten simulate ------------------------------------------------------------------
def _arrivals(args, workload):
    """``(requests with arrivals, ArrivalConfig)`` from the arrival options."""
    from hasten.serve.arrivals import ArrivalConfig

    if args.cv is not None and args.rate is None:
        raise ValueError(f"--cv {args.cv} needs --rate (gamma arrivals at a rate)")
    if args.speedup != 1.0 and not args.replay:
        raise ValueError(f"--speedup {args.speedup} applies to --replay only")
    if args.rate is None and not args.replay:
        if args.num is not None or args.duration is not None:
            raise ValueError("--num and --duration apply to --rate or --replay; use --burst N")
        n = args.burst if args.burst is not None else min(DEFAULT_BURST, len(workload))
        arrivals = ArrivalConfig("burst")
        return arrivals.apply(workload.first(n, f"--burst {n}")), arrivals
    if args.rate is not None:
        kind = "poisson" if args.cv is None else "gamma"
        arrivals = ArrivalConfig(kind, rate=args.rate, cv=args.cv, seed=args.seed)
        duration = 60.0 if args.duration is None else args.duration
        n = args.num if args.num is not None else max(1, round(args.rate * duration))
        why = f"--num {n}" if args.num is not None else f"--rate {args.rate:g} x {duration:g} s"
        return arrivals.apply(workload.first(n, why)), arrivals
    if not workload.has_arrivals:
        raise ValueError(
            f"{workload.describe()} records no arrival times (all at 0); use --rate or --burst"
        )
    arrivals = ArrivalConfig("replay", speedup=args.speedup)
    requests = arrivals.apply(workload.requests)
    if args.duration is not None:
        requests = [r for r in requests if r.arrival < args.duration]
    if args.num is not None:
        requests = requests[: args.num]
    if not requests:
        raise ValueError(f"no request arrives within --duration {args.duration}")
    return requests, arrivals


def _simulate(args) -> int:
    from hasten.serve.sweep import build_policy, engine_dict, load_workload, run, score_kind

    kind = score_kind(args.policy)  # an unknown name fails here, with the valid ones
    workload = load_workload(args.trace, args.lengths)
    requests, arrivals = _arrivals(args, workload)
    tables = _score_tables(args, workload, requests, [kind] if kind else [])
    policy = build_policy(args.policy, tables, starvation=args.starvation)
    config, cost = _engine(args)
    row = run(requests, policy, config=config, cost=cost, first=args.first, budget=args.budget)
    report = {
        "trace": workload.trace,
        "lengths": workload.lengths,
        "trace_requests": len(workload),
        "dropped_without_lengths": workload.dropped,
        "arrivals": arrivals.describe(),
        "engine": engine_dict(config, cost),
        "scores": {k: t.describe(requests) for k, t in tables.items()} or None,
        **row,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_run(report)
    return 0


def _print_run(rep: dict) -> None:
    eng = rep["engine"]
    cap = eng["kv_capacity_tokens"]
    kv = "unlimited" if cap is None else f"{cap:,} tokens"
    lengths = f" + {rep['lengths']} ({rep['dropped_without_lengths']} dropped)"
    print(f"trace     {rep['trace']}{lengths if rep['lengths'] else ''}")
    print(f"requests  {rep['requests']:,} of {rep['trace_requests']:,}, arrivals {rep['arrivals']}")
    print(f"policy    {rep['policy']}")
    for table in (rep["scores"] or {}).values():
        print(f"scores    {table['source']}; tau-b {_fmt(table['tau_b'])} vs true lengths")
    placeholder = " (PLACEHOLDER numbers)" if eng["cost_model_placeholder"] else ""
    print(
        f"engine    {eng['cost_model']}{placeholder}, token budget {eng['token_budget']}, "
        f"max seqs {eng['max_num_seqs']}, KV {kv}, {eng['preemption']}"
    )
    m = rep["metrics"]
    if m is None:
        print("no request finished")
        return
    print()
    print(f"{'':24}{'mean':>10}{'P50':>10}{'P90':>10}{'P99':>10}{'max':>10}")
    for key, label in (
        ("per_token_latency", "per-token latency s/tok"),
        ("latency", "latency s"),
        ("ttft", "TTFT s"),
        ("tpot", "TPOT s"),
        ("max_wait", "max waiting time s"),
    ):
        s = m[key]
        print(
            f"{label:24}"
            + "".join(f"{_fmt(s[q]):>10}" for q in ("mean", "p50", "p90", "p99", "max"))
        )
    print()
    print(
        f"finished     {rep['finished']:,} of {rep['requests']:,} in {m['duration']:.4g} s "
        f"({rep['iterations']:,} iterations)"
    )
    tok = "-" if m["tokens_per_s"] is None else f"{m['tokens_per_s']:,.0f}"
    print(f"throughput   {tok} tokens/s, {_fmt(m['requests_per_s'])} requests/s")
    print(f"preemptions  {m['preemptions']:,}")
    gen = rep.get("generation")
    if gen:
        if gen.get("time_to_first") is not None:
            print(f"time until {gen['first']:,} finished: {gen['time_to_first']:.4g} s")
        if gen.get("finished_within_budget") is not None:
            print(f"finished within {gen['budget']:g} s: {gen['finished_within_budget']:,}")
        print("(metrics above cover the requests finished when the run stopped)")


# ---- hasten simulate compare ----------------------------------------------------------
def _compare(args) -> int:
    from hasten.serve.sweep import (
        SweepConfig,
        engine_dict,
        load_workload,
        plot_burst,
        plot_rates,
        score_kind,
        sweep,
    )

    sweep_config = SweepConfig(
        policies=tuple(args.policies),
        rates=tuple(args.rates),
        duration=args.duration,
        burst=args.burst,
        cv=args.cv,
        seed=args.seed,
        starvation=args.starvation,
    )
    kinds = sorted({k for k in map(score_kind, sweep_config.policies) if k})
    workload = load_workload(args.trace, args.lengths)
    pool = workload.first(sweep_config.requests_needed(), "the largest load point")
    tables = _score_tables(args, workload, pool, kinds)
    config, cost = _engine(args)
    rows = sweep(workload, sweep_config, tables, config=config, cost=cost)

    import dataclasses

    report = {
        "workload": {
            "trace": workload.trace,
            "lengths": workload.lengths,
            "requests": len(workload),
            "dropped_without_lengths": workload.dropped,
        },
        "sweep": dataclasses.asdict(sweep_config),
        "engine": engine_dict(config, cost),
        "scores": {k: t.describe(pool) for k, t in tables.items()} or None,
        "runs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "compare.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    written = [path]
    label = f"{workload.trace}, {cost.name}"
    if sweep_config.rates:
        for stat in ("mean", "p90"):
            written.append(
                plot_rates(
                    rows,
                    stat,
                    args.out / f"per_token_latency_{stat}.png",
                    title=f"{stat.replace('p', 'P')} per-token latency ({label})",
                )
            )
    if sweep_config.burst:
        written.append(
            plot_burst(
                rows,
                args.out / "burst.png",
                title=f"burst of {sweep_config.burst:,} ({label})",
            )
        )
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_compare(report)
    for p in written:
        print(f"wrote {p}", file=sys.stderr)
    return 0


def _print_compare(rep: dict) -> None:
    rows = rep["runs"]
    points = list(dict.fromkeys(r["arrivals"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    heads = [
        p.split(",")[0].replace("poisson(rate=", "").replace("gamma(rate=", "") for p in points
    ]
    for table in (rep["scores"] or {}).values():
        print(f"scores: {table['source']}; tau-b {_fmt(table['tau_b'])} (n={table['n']})")
    for stat, label in (("mean", "mean"), ("p90", "P90")):
        print(f"\n{label} per-token latency (s/token) by rate (req/s)")
        print(f"{'policy':16}" + "".join(f"{h:>10}" for h in heads))
        for name in names:
            cells = []
            for p in points:
                row = next(r for r in rows if r["name"] == name and r["arrivals"] == p)
                v = None if row["metrics"] is None else row["metrics"]["per_token_latency"][stat]
                cells.append(f"{_fmt(v):>10}")
            print(f"{name:16}" + "".join(cells))
