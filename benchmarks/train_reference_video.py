"""Train the reference video model end to end and measure it: the one GPU run of issue 7.

In order: the quality classifier, the flow-matching teacher, a guidance pick, the three
distillation stages (consistency, layer-wise sparsity search, sparse KD), extra students
and thresholds for the quality-vs-speed table, then quality and timing of every setting on
one machine in one process. Every phase has a step cap and a wall-clock budget; a global
deadline skips the optional table rows. Writes to --out (at most 8 files):

    teacher.pt student.pt sparse-student.pt classifier.pt   (fp16 weights, each < 16 MiB)
    train.log results.json results.md losses.png

    HASTEN_COMMIT=<sha> python benchmarks/train_reference_video.py --out $OUT
    python benchmarks/train_reference_video.py --quick --device cpu --out /tmp/rv   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from hasten.attn import Dense, FrameTiles, SlidingTile, sparse_attention
from hasten.toyvideo.checkpoint import load_model, save_classifier, save_model, write_json
from hasten.toyvideo.consistency import ConsistencyConfig
from hasten.toyvideo.distill import STAGE3_LR, DistillConfig, stage1, stage2, stage3
from hasten.toyvideo.evaluate import eval_prompts, evaluate, real_clips
from hasten.toyvideo.loop import Budget
from hasten.toyvideo.metric import ClipClassifier, measure
from hasten.toyvideo.model import DiTConfig, VideoDiT, count_parameters
from hasten.toyvideo.plot import plot_losses
from hasten.toyvideo.sampling import generate
from hasten.toyvideo.train import TrainConfig, train_classifier, train_teacher
from hasten.toyvideo.world import WorldConfig, sample_clips

PRESETS = {
    # The packaged model: 16 frames of 64x64, 2x8x8 patches -> 8x8x8 tokens.
    "default": DiTConfig(),
    # Small enough to train on a laptop CPU in minutes (the CPU placeholder weights).
    "small": DiTConfig(frames=16, size=32, patch=(2, 4, 4), dim=96, depth=4, heads=3),
    # For --quick smoke runs.
    "tiny": DiTConfig(frames=8, size=32, patch=(2, 8, 8), dim=64, depth=2, heads=2),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for stage files (default a fresh temporary folder)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds (smoke test)")
    p.add_argument(
        "--total-seconds",
        type=float,
        default=360,
        help="deadline after which optional table rows are skipped (360)",
    )
    p.add_argument("--classifier-seconds", type=float, default=25)
    p.add_argument("--classifier-steps", type=int, default=3000)
    p.add_argument("--classifier-batch", type=int, default=64)
    p.add_argument("--teacher-seconds", type=float, default=160)
    p.add_argument("--teacher-steps", type=int, default=100_000)
    p.add_argument("--teacher-batch", type=int, default=128)
    p.add_argument("--teacher-lr", type=float, default=5e-4)
    p.add_argument(
        "--teacher-init",
        type=Path,
        default=None,
        help="continue training this saved teacher (e.g. the packaged one) instead of a new one",
    )
    p.add_argument("--guidances", default="1,1.5,2.5", help="teacher guidance candidates")
    p.add_argument("--pick-prompts", type=int, default=96, help="clips per guidance candidate")
    p.add_argument("--steps", type=int, default=4, help="student steps (segments)")
    p.add_argument("--ode-steps", type=int, default=48, help="teacher steps in stage 1")
    p.add_argument("--stage1-seconds", type=float, default=50)
    p.add_argument("--stage1-steps", type=int, default=100_000)
    p.add_argument("--threshold", type=float, default=0.05, help="stage 2 r of the main student")
    p.add_argument("--calibration-prompts", type=int, default=32, help="stage 2 batch (32)")
    p.add_argument("--stage3-seconds", type=float, default=25)
    p.add_argument("--stage3-steps", type=int, default=100_000)
    p.add_argument("--distill-batch", type=int, default=64)
    p.add_argument(
        "--table-thresholds",
        default="0.02,0.1,0.2",
        help="extra r for the table (stage 2 + a shorter stage 3 each)",
    )
    p.add_argument("--table-stage3-seconds", type=float, default=12)
    p.add_argument("--table-steps", default="2,8", help="extra student step counts")
    p.add_argument("--table-stage1-seconds", type=float, default=15)
    p.add_argument("--eval-prompts", type=int, default=288, help="clips per setting (2 x 144)")
    p.add_argument("--teacher-eval-steps", type=int, default=50)
    p.add_argument("--time-batch", type=int, default=1, help="batch of the latency timing")
    p.add_argument("--throughput-batch", type=int, default=32)
    p.add_argument(
        "--placeholder", action="store_true", help="label the weights as a CPU-trained placeholder"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.preset = "tiny"
        for name, value in dict(
            classifier_seconds=8,
            classifier_steps=40,
            classifier_batch=8,
            teacher_seconds=15,
            teacher_steps=60,
            teacher_batch=8,
            guidances="1,2",
            pick_prompts=8,
            calibration_prompts=4,
            stage1_seconds=6,
            stage1_steps=12,
            stage3_seconds=4,
            stage3_steps=8,
            distill_batch=4,
            table_thresholds="0.2",
            table_stage3_seconds=2,
            table_steps="2",
            table_stage1_seconds=2,
            eval_prompts=16,
            teacher_eval_steps=8,
            ode_steps=8,
            throughput_batch=4,
            total_seconds=120,
        ).items():
            setattr(args, name, value)
    return args


class Log:
    """Print and append to train.log (the file comes back from the GPU machine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def backend_check(cfg: DiTConfig, device, log) -> str:
    """The attention backend to use: auto, unless it fails or disagrees with the oracle."""
    if torch.device(device).type != "cuda":
        return "auto"
    layout = cfg.layout
    shape = (2, cfg.heads, layout.seq_len, cfg.dim // cfg.heads)
    for pattern in (Dense(), FrameTiles(1), SlidingTile((3, 1, 1))):
        try:
            q, k, v = (
                torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True)
                for _ in range(3)
            )
            out = sparse_attention(q, k, v, layout, pattern)
            ref = sparse_attention(
                q.float(), k.float(), v.float(), layout, pattern, backend="reference"
            )
            err = float((out.float() - ref).abs().max())
            out.float().sum().backward()
            if not err < 5e-2:
                raise RuntimeError(f"max error {err:.3g} against the reference")
        except Exception as e:  # any failure: fall back to the oracle, and say so
            log(f"backend check: auto failed on {pattern!r} ({e}); using 'reference'")
            return "reference"
    log("backend check: auto (triton) agrees with the reference on dense, frame-tiles, sta")
    return "auto"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train.log")
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = PRESETS[args.preset]
    world: WorldConfig = cfg.world
    env = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": os.environ.get("HASTEN_COMMIT", "unknown"),
        "preset": args.preset,
        "config": cfg.to_dict(),
        "argv": sys.argv[1:],
    }
    results: dict = {"env": env, "phases": {}, "rows": []}

    def save_results():
        write_json(out / "results.json", results)

    log(f"reference video model on {env['device']}, preset {args.preset}: {cfg}")
    backend = backend_check(cfg, device, log)
    curves: dict[str, list[float]] = {}
    placeholder = {"placeholder": True} if args.placeholder else {}

    # 1. The quality classifier (trained on real clips only).
    t = time.monotonic()
    classifier = ClipClassifier()
    curves["classifier"] = train_classifier(
        classifier,
        world,
        Budget(args.classifier_steps, args.classifier_seconds),
        TrainConfig(batch=args.classifier_batch, lr=2e-3, warmup=50, drop_text=0.0, seed=5),
        device,
        log=log,
    )
    held_x, held_a = sample_clips(256 if not args.quick else 32, 99_999, world)
    sanity = measure(classifier, held_x, held_a, held_x)
    log(
        f"classifier on held-out real clips: adherence {sanity.adherence:.3f} "
        f"(exact {sanity.exact:.3f}) {sanity.per_attribute}"
    )
    results["phases"]["classifier"] = {
        "seconds": time.monotonic() - t,
        "steps": len(curves["classifier"]),
        "real_clips": sanity.to_dict(),
    }
    save_classifier(
        out / "classifier.pt", classifier, real_adherence=sanity.adherence, **placeholder
    )
    save_results()

    # 2. The teacher: new, or continued from a saved one (one GPU call cannot train it long).
    t = time.monotonic()
    model, prior = VideoDiT(cfg), {"train_steps": 0, "train_seconds": 0.0}
    if args.teacher_init is not None:
        model, meta = load_model(args.teacher_init)
        if model.cfg != cfg:
            raise ValueError(f"--teacher-init {args.teacher_init} has {model.cfg}, not {cfg}")
        prior = {k: meta.get(k, 0) for k in prior}
        log(f"teacher: continuing {args.teacher_init} after {prior['train_steps']} steps")
    model.set_backend(backend)
    log(f"teacher: {count_parameters(model) / 1e6:.2f} M parameters, {cfg.layout}")
    teacher, curves["teacher"] = train_teacher(
        model,
        Budget(args.teacher_steps, args.teacher_seconds),
        # A continued run draws fresh batches: the data seed moves with the steps done.
        TrainConfig(
            batch=args.teacher_batch,
            lr=args.teacher_lr,
            warmup=200,
            ema=0.999,
            seed=prior["train_steps"],
        ),
        device,
        log=log,
    )
    teacher.eval()
    results["phases"]["teacher"] = {
        "seconds": time.monotonic() - t,
        "steps": len(curves["teacher"]),
        "init": None if args.teacher_init is None else str(args.teacher_init),
        "prior_steps": prior["train_steps"],
    }

    # 3. Guidance: the candidate with the best prompt adherence on a quick 25-step check.
    attrs_pick = eval_prompts(args.pick_prompts)
    real_pick = real_clips(attrs_pick, world, seed=4242)
    picks = {}
    for g in (float(x) for x in args.guidances.split(",")):
        clips = generate(teacher, attrs_pick, min(25, args.teacher_eval_steps), g, seed=31)
        picks[g] = measure(classifier.to(device), clips, attrs_pick, real_pick).to_dict()
        log(
            f"guidance {g:g}: adherence {picks[g]['adherence']:.3f}, "
            f"Frechet {picks[g]['frechet']:.2f}"
        )
    guidance = max(picks, key=lambda g: (round(picks[g]["adherence"], 2), -g))
    log(f"teacher guidance: {guidance:g}")
    results["phases"]["guidance"] = {"candidates": picks, "chosen": guidance}
    save_model(
        out / "teacher.pt",
        teacher,
        steps=args.teacher_eval_steps,
        guidance=guidance,
        stage="teacher",
        train_steps=prior["train_steps"] + len(curves["teacher"]),
        train_seconds=prior["train_seconds"] + results["phases"]["teacher"]["seconds"],
        **placeholder,
    )
    save_results()

    # 4. The three stages for the main student.
    def distill_config(steps, threshold, s1, s3):
        train = dict(batch=args.distill_batch, lr=1e-4, warmup=50, drop_text=0.0)
        return DistillConfig(
            consistency=ConsistencyConfig(steps, args.ode_steps, guidance),
            stage1=Budget(args.stage1_steps, s1),
            stage1_train=TrainConfig(**train, seed=1),
            threshold=threshold,
            calibration_prompts=args.calibration_prompts,
            stage3=Budget(args.stage3_steps, s3),
            stage3_train=TrainConfig(**{**train, "lr": STAGE3_LR}, seed=2),
            checkpoint_every=0,
        )

    # Stage files live outside --out: only the eight files above come back from the GPU.
    work = args.work or Path(tempfile.mkdtemp(prefix="hasten-rv-"))
    log(f"stage files in {work}")
    main_cfg = distill_config(args.steps, args.threshold, args.stage1_seconds, args.stage3_seconds)
    t = time.monotonic()
    student = stage1(teacher, work / f"s{args.steps}", main_cfg, device, log)
    t1 = time.monotonic() - t
    main_dir = work / f"s{args.steps}" / f"r{args.threshold}"
    strategy = stage2(student, main_dir, main_cfg, device, log)
    t2 = time.monotonic() - t - t1
    sparse = stage3(student, strategy, main_dir, main_cfg, device, log)
    t3 = time.monotonic() - t - t1 - t2
    for name, folder in (("stage 1 consistency", main_dir.parent), ("stage 3 sparse KD", main_dir)):
        curves[name] = json.loads((folder / "losses.json").read_text())[name]
    results["phases"]["distill"] = {
        "stage1_seconds": t1,
        "stage2_seconds": t2,
        "stage3_seconds": t3,
        "stage1_steps": len(curves["stage 1 consistency"]),
        "stage3_steps": len(curves["stage 3 sparse KD"]),
        "strategy": strategy.to_dict(),
    }
    save_model(
        out / "student.pt",
        student,
        steps=args.steps,
        guidance=1.0,
        stage="consistency",
        teacher_guidance=guidance,
        **placeholder,
    )
    save_model(
        out / "sparse-student.pt",
        sparse,
        steps=args.steps,
        guidance=1.0,
        stage="sparse-kd",
        threshold=args.threshold,
        family="frame-tiles",
        **placeholder,
    )
    try:
        plot_losses(curves, out / "losses.png")
    except ImportError as e:  # the GPU image may lack matplotlib; the curves are in the JSON
        log(f"no loss-curve PNG ({e})")
    results["curves"] = {k: v[:: max(1, len(v) // 500)] for k, v in curves.items()}
    save_results()

    # 5. Evaluation: every setting on the same prompts, real clips and machine.
    attrs = eval_prompts(args.eval_prompts)
    real = real_clips(attrs, world)
    classifier.to(device)

    def row(name, m, steps, g, **extra):
        r = evaluate(
            m,
            classifier,
            attrs,
            real,
            steps,
            g,
            seed=2024,
            time_batch=args.time_batch,
            repeats=5 if not args.quick else 2,
        )
        r["seconds_batch"] = _throughput(m, attrs, steps, g)
        r["backend"] = backend
        if extra.get("kind") == "teacher" and backend != "reference":
            # The baseline at its fastest: dense attention also through the reference
            # backend (PyTorch SDPA), and the faster of the two is the teacher's time.
            from hasten.toyvideo.sampling import time_generation

            m.set_backend("reference")
            ref = time_generation(m, attrs[: args.time_batch], steps, g, repeats=5)
            ref_batch = _throughput(m, attrs, steps, g)
            m.set_backend(backend)
            r.update(seconds_sdpa=ref, seconds_batch_sdpa=ref_batch)
            r["seconds"], r["seconds_batch"] = (
                min(r["seconds"], ref),
                min(r["seconds_batch"], ref_batch),
            )
        r.update(name=name, **extra)
        results["rows"].append(r)
        log(
            f"{name:<34} steps {steps:>2}  adherence {r['adherence']:.3f}  exact "
            f"{r['exact']:.3f}  Frechet {r['frechet']:7.2f}  {1000 * r['seconds']:8.1f} ms  "
            f"density {r['attention_density']:.2f}"
        )
        save_results()
        return r

    def _throughput(m, a, steps, g):
        from hasten.toyvideo.sampling import time_generation

        n = min(args.throughput_batch, a.shape[0])
        return time_generation(m, a[:n], steps, g, repeats=3 if not args.quick else 1)

    base = row("teacher (dense)", teacher, args.teacher_eval_steps, guidance, kind="teacher")
    row("teacher (dense), student's steps", teacher, args.steps, guidance, kind="teacher-few")
    row("consistency student (dense)", student, args.steps, 1.0, kind="student")
    row(
        f"sparse student r={args.threshold}",
        sparse,
        args.steps,
        1.0,
        kind="sparse",
        threshold=args.threshold,
    )
    plain = copy.deepcopy(student)
    plain.set_patterns(strategy.patterns)
    row(
        f"student + r={args.threshold} mask, no KD",
        plain,
        args.steps,
        1.0,
        kind="sparse-no-kd",
        threshold=args.threshold,
    )

    # 6. Optional table rows, while the deadline allows.
    for r_extra in (float(x) for x in args.table_thresholds.split(",") if x):
        if log.elapsed > args.total_seconds:
            log(f"deadline: skipping r={r_extra}")
            continue
        c = distill_config(args.steps, r_extra, args.stage1_seconds, args.table_stage3_seconds)
        folder = work / f"s{args.steps}" / f"r{r_extra}"
        st = stage2(student, folder, c, device, log)
        sp = stage3(student, st, folder, c, device, log)
        row(f"sparse student r={r_extra}", sp, args.steps, 1.0, kind="sparse", threshold=r_extra)
    for steps in (int(x) for x in args.table_steps.split(",") if x):
        if log.elapsed > args.total_seconds or args.ode_steps % steps:
            log(f"skipping the {steps}-step student (deadline or {args.ode_steps} % {steps})")
            continue
        c = distill_config(steps, args.threshold, args.table_stage1_seconds, args.stage3_seconds)
        st_model = stage1(teacher, work / f"s{steps}", c, device, log)
        row("teacher (dense), student's steps", teacher, steps, guidance, kind="teacher-few")
        row("consistency student (dense)", st_model, steps, 1.0, kind="student")

    sparse_row = next(r for r in results["rows"] if r["kind"] == "sparse")
    results["targets"] = {
        "speedup_4step_sparse_vs_teacher": base["seconds"] / sparse_row["seconds"],
        "speedup_batch": base["seconds_batch"] / sparse_row["seconds_batch"],
        "adherence_gap_points": 100 * (base["adherence"] - sparse_row["adherence"]),
    }
    results["total_seconds"] = log.elapsed
    save_results()
    (out / "results.md").write_text(markdown(results))
    log("\n" + markdown(results))
    return 0


def markdown(results: dict) -> str:
    rows = results["rows"]
    base = rows[0]
    lines = [
        f"Card: {results['env']['device']}, torch {results['env']['torch']}, commit "
        f"`{results['env']['commit']}`; {rows[0]['n']} clips per row, latency at batch "
        f"{rows[0]['time_batch']}.",
        "",
        "| setting | steps | mean attn density | adherence | all 4 right | Frechet | ms / clip "
        "| x teacher | batch s | x teacher (batch) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['attention_density']:.2f} | "
            f"{100 * r['adherence']:.1f}% | {100 * r['exact']:.1f}% | {r['frechet']:.2f} | "
            f"{1000 * r['seconds']:.1f} | {base['seconds'] / r['seconds']:.1f} | "
            f"{r['seconds_batch']:.3f} | {base['seconds_batch'] / r['seconds_batch']:.1f} |"
        )
    t = results.get("targets", {})
    if t:
        gap = t["adherence_gap_points"]  # teacher minus student
        side = "below" if gap >= 0 else "above"
        lines += [
            "",
            f"Sparse student vs teacher: {t['speedup_4step_sparse_vs_teacher']:.1f}x "
            f"faster (batch: {t['speedup_batch']:.1f}x), adherence "
            f"{abs(gap):.1f} points {side} the teacher's.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
