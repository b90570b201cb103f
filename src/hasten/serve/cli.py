"""``hasten trace ...`` (and the other serving commands): traces, ranking, simulation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hasten.serve.losses import LOSSES
from hasten.serve.rank_train import MODES


def add_trace_commands(sub) -> None:
    trace = sub.add_parser("trace", help="LLM request traces: generate output lengths")
    cmds = trace.add_subparsers(dest="trace_command", required=True, metavar="SUBCOMMAND")
    g = cmds.add_parser(
        "generate",
        help="sample the serving model on a prompt file and record output lengths",
        description="Resumable: rerun the same command to continue where it stopped.",
    )
    g.add_argument(
        "--prompts",
        default="sharegpt",
        help="prompt file or shared data name (default sharegpt: 5,164 prompts)",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=Path("traces/sharegpt-smollm2.jsonl"),
        help="JSONL of recorded lengths (default traces/sharegpt-smollm2.jsonl)",
    )
    g.add_argument(
        "--model",
        default=None,
        help="HF model name or path (default: packaged SmolLM2-135M-Instruct)",
    )
    g.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    g.add_argument(
        "--second-samples",
        type=int,
        default=1000,
        help="prompts that get a second, independent sample (default 1000)",
    )
    g.add_argument("--max-tokens", type=int, default=1024)
    g.add_argument("--batch", type=int, default=64, help="prompts per engine call (default 64)")
    g.add_argument(
        "--engine",
        choices=["vllm", "transformers"],
        default="vllm",
        help="vllm (the serving engine, default) or transformers (generate on a GPU)",
    )
    g.add_argument(
        "--max-batch-tokens",
        type=int,
        default=2_000_000,
        help="transformers: cap on batch x (longest prompt + max tokens) (default 2,000,000)",
    )
    g.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds after which no new batch starts (default: run to the end)",
    )
    g.set_defaults(func=_generate)


def _generate(args) -> int:
    from hasten.serve.generate import GenerateConfig, generate_lengths
    from hasten.serve.trace import load_trace

    requests = load_trace(args.prompts)
    if args.limit is not None:
        requests = requests[: args.limit]
    cfg = GenerateConfig(
        out=args.out,
        model=args.model,
        max_tokens=args.max_tokens,
        second_samples=args.second_samples,
        batch=args.batch,
        engine=args.engine,
        max_batch_tokens=args.max_batch_tokens,
        time_budget=args.time_budget,
    )
    print(f"{len(requests)} prompts -> {cfg.out}")
    generate_lengths(requests, cfg)
    return 0


def add_rank_commands(sub) -> None:
    rank = sub.add_parser("rank", help="the learned length ranker: train and evaluate")
    cmds = rank.add_subparsers(dest="rank_command", required=True, metavar="SUBCOMMAND")

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--prompts", default="sharegpt", help="prompt file or shared data name (sharegpt)"
        )
        p.add_argument(
            "--lengths",
            type=Path,
            default=Path("traces/sharegpt-smollm2.jsonl"),
            help="recorded lengths (rows id, sample, prompt_tokens, output_tokens); "
            "prompts without a sample-0 row are left out",
        )
        p.add_argument(
            "--test-fraction",
            type=float,
            default=None,
            help="held-out share, split by a hash of the prompt id (default 0.1, or what "
            "the ranker was trained with)",
        )
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
        p.add_argument("--batch-size", type=int, default=32, help="prompts per encoder call")
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    t = cmds.add_parser(
        "train",
        help="train a ranker on the training split and report tau-b on the held-out split",
    )
    data_args(t)
    t.add_argument("--out", type=Path, required=True, help="head weights (.pt; .json beside)")
    t.add_argument("--loss", choices=LOSSES, default="listmle")
    t.add_argument(
        "--mode",
        choices=MODES,
        default="head",
        help="head: frozen encoder, embeddings computed once (CPU-friendly); "
        "finetune: encoder and head (wants a GPU, or --layers on a CPU)",
    )
    t.add_argument(
        "--layers",
        type=int,
        default=None,
        help="with --mode finetune: train only the top N encoder layers (cheaper; saved as "
        "those layers alone, a few MB)",
    )
    t.add_argument("--epochs", type=int, default=None, help="default: head 30, finetune 5")
    t.add_argument("--lr", type=float, default=None, help="default: head 1e-3, finetune 2e-5")
    t.add_argument("--list-size", type=int, default=32, help="prompts per ListMLE list (32)")
    t.add_argument("--classes", type=int, default=10, help="buckets for --loss classify (10)")
    t.add_argument(
        "--encoder", default=None, help="HF encoder name or path (default: packaged MiniLM)"
    )
    t.add_argument("--max-tokens", type=int, default=512, help="prompt tokens read (512)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_rank_train)

    x = cmds.add_parser(
        "crossfit",
        help="out-of-fold scores for every labelled prompt (for hasten simulate --scores)",
        description="Trains one frozen-encoder head per fold on the other folds and scores "
        "the fold it left out, so every prompt gets a prediction from a model that never "
        "trained on it.",
    )
    data_args(x)
    x.add_argument("--out", type=Path, required=True, help="scores .jsonl (rows id, score, fold)")
    x.add_argument("--folds", type=int, default=10, help="folds, split by a hash of the id (10)")
    x.add_argument("--loss", choices=[c for c in LOSSES if c != "classify"], default="listmle")
    x.add_argument("--epochs", type=int, default=None, help="default 30")
    x.add_argument("--lr", type=float, default=None, help="default 1e-3")
    x.add_argument(
        "--encoder", default=None, help="HF encoder name or path (default: packaged MiniLM)"
    )
    x.add_argument("--max-tokens", type=int, default=512, help="prompt tokens read (512)")
    x.add_argument("--seed", type=int, default=0)
    x.set_defaults(func=_rank_crossfit)

    e = cmds.add_parser("eval", help="tau-b of a saved ranker on the held-out split")
    data_args(e)
    e.add_argument(
        "--ranker", type=Path, default=None, help="saved ranker .pt (default: the packaged one)"
    )
    e.add_argument(
        "--all", action="store_true", help="score every prompt with a row, not only held-out"
    )
    e.set_defaults(func=_rank_eval)


def _print_report(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=1))
        return
    tau = report["tau_b"]
    print(f"held-out tau-b: {'n/a' if tau is None else f'{tau:.4f}'} (n={report['n']})")
    for key, label in (("noise_ceiling", "all"), ("noise_ceiling_test", "held-out")):
        c = report[key]
        if c is not None:
            print(f"noise ceiling ({label} prompts with 2 samples): {c['tau_b']:.4f} (n={c['n']})")
    mean = report.get("expected_length_ceiling")
    if mean is not None:
        print(f"a predictor of each prompt's expected length: ~{mean:.3f} (estimated from it)")


def _rank_train(args) -> int:
    from hasten.serve.rank_train import (
        TrainConfig,
        held_out_report,
        labelled_requests,
        split_requests,
        train_ranker,
    )
    from hasten.serve.ranker import RankerConfig

    if args.out.suffix != ".pt":
        raise ValueError(f"--out must end in .pt (the .json goes beside it), got {args.out}")
    fraction = 0.1 if args.test_fraction is None else args.test_fraction
    requests = labelled_requests(args.prompts, args.lengths)
    train, test = split_requests(requests, fraction)
    if len(train) < 2:
        raise ValueError(f"only {len(train)} training prompts in {args.lengths}; need >= 2")
    cfg = TrainConfig(
        loss=args.loss,
        mode=args.mode,
        layers=args.layers,
        epochs=args.epochs,
        lr=args.lr,
        list_size=args.list_size,
        classes=args.classes,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    print(f"{len(requests)} labelled prompts: {len(train)} train, {len(test)} held out")
    rcfg = RankerConfig(args.encoder, args.max_tokens)
    embeddings = None
    if args.mode == "head" and args.loss != "classify":
        # A frozen encoder embeds each prompt once ever (the cache is shared with crossfit).
        from hasten.serve.embed_cache import cached_embed
        from hasten.serve.ranker import Ranker

        ranker = Ranker.new(rcfg, device=args.device, seed=args.seed)
        embeddings = cached_embed(
            ranker, [r.prompt for r in train], batch_size=args.batch_size, progress=True
        )
    else:
        ranker = rcfg
    ranker = train_ranker(train, cfg, ranker=ranker, device=args.device, embeddings=embeddings)
    report = held_out_report(ranker, test, args.lengths, batch_size=args.batch_size)
    ranker.provenance["data"] = _data_provenance(args, fraction, len(train), len(test))
    ranker.provenance["held_out"] = report
    ranker.save(args.out)
    _print_report(report, args.json)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


def _rank_crossfit(args) -> int:
    from hasten.serve.rank_crossfit import crossfit_scores
    from hasten.serve.rank_train import TrainConfig, labelled_requests
    from hasten.serve.ranker import RankerConfig

    requests = labelled_requests(args.prompts, args.lengths)
    cfg = TrainConfig(
        loss=args.loss, epochs=args.epochs, lr=args.lr, seed=args.seed, batch_size=args.batch_size
    )
    print(f"{len(requests)} labelled prompts, {args.folds} folds")
    fit = crossfit_scores(
        requests,
        cfg,
        folds=args.folds,
        ranker=RankerConfig(args.encoder, args.max_tokens),
        device=args.device,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for r, k in zip(requests, fit.folds, strict=True):
            f.write(json.dumps({"id": r.id, "score": fit.scores[r.id], "fold": k}) + "\n")
    report = {
        "tau_b": fit.pooled.tau_b,
        "n": fit.pooled.n,
        "folds": args.folds,
        "per_fold_tau_b": [None if t is None else t.tau_b for t in fit.per_fold],
        "lengths": str(args.lengths),
        "out": str(args.out),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        spread = [t for t in report["per_fold_tau_b"] if t is not None]
        print(
            f"out-of-fold tau-b: {fit.pooled.tau_b:.4f} (n={fit.pooled.n}; folds "
            f"{min(spread):.3f}-{max(spread):.3f})"
        )
        print(f"wrote {args.out}")
    return 0


def _rank_eval(args) -> int:
    from hasten.serve.rank_train import held_out_report, labelled_requests, split_requests
    from hasten.serve.ranker import Ranker

    try:
        if args.ranker is None:
            ranker = Ranker.default(device=args.device)
        else:
            ranker = Ranker.load(args.ranker, device=args.device)
    except FileNotFoundError as e:
        # A missing ranker is bad input here: say how to make one, without a traceback.
        raise ValueError(str(e)) from None
    trained = ranker.provenance.get("data", {}).get("test_fraction", 0.1)
    fraction = trained if args.test_fraction is None else args.test_fraction
    requests = labelled_requests(args.prompts, args.lengths)
    test = requests if args.all else split_requests(requests, fraction)[1]
    report = held_out_report(ranker, test, args.lengths, batch_size=args.batch_size)
    report["split"] = "all" if args.all else f"held-out {fraction}"
    _print_report(report, args.json)
    return 0


def _data_provenance(args, fraction: float, n_train: int, n_test: int) -> dict:
    """Which data a ranker saw: enough to say later what its tau-b was measured on."""
    import hashlib
    from datetime import UTC, datetime

    import torch
    import transformers

    from hasten import __version__

    raw = args.lengths.read_bytes()
    return {
        "prompts": str(args.prompts),
        "lengths": str(args.lengths),
        "lengths_rows": raw.count(b"\n"),
        "lengths_sha256": hashlib.sha256(raw).hexdigest()[:16],
        "test_fraction": fraction,
        "n_train": n_train,
        "n_test": n_test,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {
            "hasten": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def add_serve_commands(sub: argparse._SubParsersAction) -> None:
    add_trace_commands(sub)
    add_rank_commands(sub)
    from hasten.serve.bench_cli import add_bench_commands
    from hasten.serve.serve_cli import add_serve_command
    from hasten.serve.simulate_cli import add_simulate_commands

    add_simulate_commands(sub)
    add_serve_command(sub)
    add_bench_commands(sub)
