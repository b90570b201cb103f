"""``hasten generate`` and ``hasten distill``: the reference video model from the command line."""

from __future__ import annotations

import time
from pathlib import Path

from hasten.attn import Dense, FrameTiles, Pattern, SlidingTile
from hasten.toyvideo.distill import STAGE3_LR


def add_toyvideo_commands(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="generate a clip with the reference video model (CPU, seconds)",
        description="Text to video with the packaged reference DiT of the procedural world.",
    )
    g.add_argument(
        "prompt",
        help="'<count> <colour> <shape> moving <direction>', e.g. 'two red squares moving left'",
    )
    g.add_argument(
        "--model",
        default="sparse-student",
        help="teacher, student, sparse-student (default) or a .pt checkpoint",
    )
    g.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps (default: the model's own, 50 teacher / 4 students)",
    )
    g.add_argument(
        "--attention",
        default="model",
        help="model (the checkpoint's own, default), dense, sta, frame-tiles or a "
        "strategy JSON from hasten distill",
    )
    g.add_argument("--window", type=int, default=3, help="sta: window in latent frames (3)")
    g.add_argument("--global-frames", type=int, default=1, help="frame-tiles: k of k:(T-k) (1)")
    g.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance (default: the model's own)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--samples", type=int, default=1, help="clips side by side (default 1)")
    g.add_argument("--device", default="cpu")
    g.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="Ulysses sequence parallelism over N local processes (gloo on CPU, NCCL on "
        "CUDA, one GPU each); the model's heads must divide among them (default 1)",
    )
    g.add_argument("-o", "--out", type=Path, default=Path("out.gif"), help=".gif or .mp4")
    g.set_defaults(func=_generate)

    d = sub.add_parser(
        "distill",
        help="three-stage few-step + sparse distillation of the reference model",
        description="Stage 1 consistency distillation, stage 2 layer-wise sparsity search, "
        "stage 3 knowledge distillation. Resumable: rerun the same command to continue.",
    )
    d.add_argument("--teacher", default="teacher", help="teacher checkpoint (default packaged)")
    d.add_argument("--out", type=Path, default=Path("runs/distill"), help="output folder")
    d.add_argument("--steps", type=int, default=4, help="student steps = segments (4)")
    d.add_argument(
        "--teacher-steps",
        type=int,
        default=48,
        help="teacher ODE steps over the trajectory (48, a multiple of --steps)",
    )
    d.add_argument(
        "--guidance", type=float, default=None, help="teacher guidance (default: the teacher's own)"
    )
    d.add_argument(
        "--threshold",
        "-r",
        type=float,
        default=0.05,
        help="stage 2: allowed relative error per layer (0.05)",
    )
    d.add_argument("--family", choices=["frame-tiles", "sta"], default="frame-tiles")
    d.add_argument("--stage1-steps", type=int, default=2000)
    d.add_argument("--stage3-steps", type=int, default=1000)
    d.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="wall-clock budget per training stage (default none)",
    )
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--lr", type=float, default=1e-4, help="stage 1 rate (default 1e-4)")
    d.add_argument(
        "--stage3-lr", type=float, default=STAGE3_LR, help=f"stage 3 rate (default {STAGE3_LR:g})"
    )
    d.add_argument("--checkpoint-every", type=int, default=200)
    d.add_argument("--device", default=None, help="cuda if available, else cpu")
    d.set_defaults(func=_distill)


def attention_from_args(args, n_layers: int) -> list[Pattern] | None:
    """The per-layer patterns ``--attention`` asks for; ``None`` keeps the model's own."""
    a = args.attention
    if a == "model":
        return None
    if a == "dense":
        return [Dense()] * n_layers
    if a == "sta":
        return [SlidingTile((args.window, 1, 1))] * n_layers
    if a == "frame-tiles":
        return [FrameTiles(args.global_frames)] * n_layers
    if Path(a).suffix == ".json" and Path(a).is_file():
        from hasten.toyvideo.sparsity import Strategy

        return Strategy.load(a).patterns
    raise ValueError(
        f"--attention {a!r} is not model, dense, sta, frame-tiles or an existing strategy .json"
    )


def _generate(args) -> int:
    from hasten.toyvideo.world import parse_prompt

    parse_prompt(args.prompt)  # bad prompts fail here, before any process starts
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc == 1:
        return _generate_rank(args)
    import socket

    import torch.multiprocessing as mp

    from hasten.parallel.ulysses import check_heads
    from hasten.toyvideo.checkpoint import load_model, resolve

    model, _ = load_model(resolve(args.model), "cpu")
    check_heads(model.cfg.heads, args.nproc)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_generate_worker, args=(args, port), nprocs=args.nproc)
    return 0


def _generate_worker(rank: int, args, port: int) -> None:
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(rank)
        args.device = f"cuda:{rank}"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.nproc)
    try:
        _generate_rank(args, rank=rank)
    finally:
        dist.destroy_process_group()


def _generate_rank(args, rank: int = 0) -> int:
    import torch

    from hasten.toyvideo.checkpoint import load_model, resolve
    from hasten.toyvideo.sampling import generate, write_video
    from hasten.toyvideo.world import parse_prompt

    attrs = parse_prompt(args.prompt)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    t0 = time.perf_counter()
    model, meta = load_model(resolve(args.model), args.device)
    if args.nproc > 1:
        from hasten.parallel import sequence_parallel

        # Every rank samples the same noise (same seed); only the blocks are sharded.
        sequence_parallel(model.blocks, model.cfg.layout, heads=model.cfg.heads)
    patterns = attention_from_args(args, len(model.blocks))
    if patterns is not None:
        model.set_patterns(patterns)
    steps = args.steps or int(meta.get("steps", 50))
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    guidance = args.guidance if args.guidance is not None else float(meta.get("guidance", 1.0))
    t_load = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    clips = generate(model, attrs[None].repeat(args.samples, 1), steps, guidance, seed=args.seed)
    t_gen, c_gen = time.perf_counter() - t1, time.process_time() - c1
    if rank:
        return 0
    path = write_video(clips, args.out)
    layout = model.cfg.layout
    density = sum(float(p.density(layout)) for p in model.patterns) / len(model.patterns)
    print(
        f"model      {args.model} ({meta.get('stage', 'unknown')}, "
        f"{'CPU-trained placeholder' if meta.get('placeholder') else 'trained'})"
    )
    print(
        f"attention  {', '.join(sorted({type(p).__name__ for p in model.patterns}))}, "
        f"mean density {density:.2f}"
    )
    par = f", {args.nproc} processes (Ulysses)" if args.nproc > 1 else ""
    print(f"steps      {steps}, guidance {guidance:g}, device {args.device}{par}")
    print(f"load       {t_load:.2f} s")
    # CPU time beside wall time: on a shared machine the wall clock also counts waiting.
    print(f"generate   {t_gen:.2f} s ({1000 * t_gen / steps:.0f} ms/step), CPU time {c_gen:.2f} s")
    print(f"wrote      {path}")
    return 0


def _distill(args) -> int:
    import torch

    from hasten.toyvideo.checkpoint import load_model, resolve
    from hasten.toyvideo.consistency import ConsistencyConfig
    from hasten.toyvideo.distill import DistillConfig, default_device, run_pipeline
    from hasten.toyvideo.loop import Budget
    from hasten.toyvideo.train import TrainConfig

    device = torch.device(args.device) if args.device else default_device()
    teacher, meta = load_model(resolve(args.teacher), device)
    guidance = args.guidance if args.guidance is not None else float(meta.get("guidance", 1.0))
    train = dict(batch=args.batch, lr=args.lr, warmup=50, drop_text=0.0)
    cfg = DistillConfig(
        consistency=ConsistencyConfig(args.steps, args.teacher_steps, guidance),
        stage1=Budget(args.stage1_steps, args.seconds),
        stage1_train=TrainConfig(**train, seed=1),
        threshold=args.threshold,
        family=args.family,
        stage3=Budget(args.stage3_steps, args.seconds),
        stage3_train=TrainConfig(**{**train, "lr": args.stage3_lr}, seed=2),
        checkpoint_every=args.checkpoint_every,
    )
    result = run_pipeline(teacher, args.out, cfg, device)
    print(f"student         {args.out / 'student.pt'} ({args.steps} steps)")
    print(
        f"strategy        {args.out / 'strategy.json'} "
        f"(mean density {result['strategy'].density:.2f})"
    )
    print(f"sparse student  {args.out / 'sparse-student.pt'}")
    print(f"loss curves     {result['losses_png']}")
    return 0
