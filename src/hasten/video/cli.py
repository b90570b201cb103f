"""``hasten calibrate`` (the mask search) and ``hasten video ...`` (presets, check, schema)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hasten.attn.cli import parse_dims
from hasten.video.tiny import MODELS

# The embedded default: a tiny random HunyuanVideo on a 5x6x10 tile grid (the published
# 720p grid) of 1x2x1 tiles, so the published candidate windows apply as they are.
DEFAULT_CANVAS = "5x12x10"
DEFAULT_TILE = "1x2x1"
DEFAULT_CANDIDATES = "1x6x10,3x3x5,5x1x10,5x3x3,5x6x1,5x6x10"


def _windows(text: str) -> tuple[tuple[int, int, int], ...]:
    return tuple(parse_dims(w) for w in text.split(",") if w.strip())


def add_calibrate_command(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="training-free mask search: per-head STA windows against dense attention",
        description=(
            "Run the dense trajectory on a few prompts or seeds, measure every candidate "
            "window's per-head error to dense attention at each step and layer, and pick the "
            "best per (step, layer, head). Writes strategy.json, report.json and heatmap.png. "
            "Resumable: rerun with the same --out to continue. The default is a tiny random "
            "HunyuanVideo transformer on CPU (no downloads)."
        ),
    )
    p.add_argument("--model", choices=MODELS, default="hunyuanvideo", help="tiny random model")
    p.add_argument(
        "--pipeline",
        type=Path,
        default=None,
        help="a local diffusers pipeline folder to calibrate instead (loaded offline)",
    )
    p.add_argument(
        "--prompt", action="append", default=None, help="prompt for --pipeline (repeatable)"
    )
    p.add_argument("--height", type=int, default=720, help="--pipeline video height")
    p.add_argument("--width", type=int, default=1280, help="--pipeline video width")
    p.add_argument("--frames", type=int, default=117, help="--pipeline video frames")
    p.add_argument(
        "--canvas",
        type=parse_dims,
        default=parse_dims(DEFAULT_CANVAS),
        help=f"tiny model: latent canvas after patchify (default {DEFAULT_CANVAS})",
    )
    p.add_argument(
        "--tile",
        type=parse_dims,
        default=parse_dims(DEFAULT_TILE),
        help=f"tile t x h x w (default {DEFAULT_TILE}; 6x8x8 for real models)",
    )
    p.add_argument(
        "--candidates",
        type=_windows,
        default=_windows(DEFAULT_CANDIDATES),
        help=f"comma-separated windows in tiles (default the published {DEFAULT_CANDIDATES})",
    )
    p.add_argument("--steps", type=int, default=8, help="denoising steps per run (default 8)")
    p.add_argument("--dense-steps", type=int, default=2, help="leading dense steps (default 2)")
    p.add_argument(
        "--prompts", type=int, default=2, help="runs to average (tiny model: seeds; default 2)"
    )
    p.add_argument(
        "--budget", type=float, default=None, help="overall sparsity to reach, e.g. 0.58"
    )
    p.add_argument("--text-length", type=int, default=6, help="tiny model: valid text tokens")
    p.add_argument("--device", default="cpu", help="device (default cpu)")
    p.add_argument(
        "--out", type=Path, default=Path("calibration"), help="output folder (default calibration/)"
    )
    p.add_argument("--restart", action="store_true", help="ignore the checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_calibrate)


def _tiny_runner(args):
    from hasten.video.tiny import pipeline_inputs, tiny_pipeline, tiny_transformer

    transformer = tiny_transformer(args.model).to(args.device)
    pipe = tiny_pipeline(args.model, transformer)
    pipe.set_progress_bar_config(disable=True)

    def run(i: int):
        kw = pipeline_inputs(
            args.model,
            transformer,
            args.canvas,
            steps=args.steps,
            seed=i,
            text_length=args.text_length,
        )
        return pipe(**kw)

    return transformer, run


def _pipeline_runner(args):
    import torch
    from diffusers import DiffusionPipeline

    if not args.prompt:
        raise ValueError("--pipeline needs at least one --prompt")
    if args.prompts > len(args.prompt):
        raise ValueError(f"--prompts {args.prompts} but only {len(args.prompt)} --prompt given")
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(
        args.pipeline, torch_dtype=dtype, local_files_only=True
    )
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)

    def run(i: int):
        return pipe(
            prompt=args.prompt[i],
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=args.steps,
            output_type="latent",
            generator=torch.Generator(args.device).manual_seed(i),
        )

    return pipe.transformer, run


def _calibrate(args) -> int:
    import torch

    from hasten.video.calibrate import CalibrationConfig, calibrate

    config = CalibrationConfig(
        candidates=args.candidates,
        steps=args.steps,
        dense_steps=args.dense_steps,
        prompts=args.prompts,
        tile=args.tile,
        budget=args.budget,
    )
    transformer, run = (_pipeline_runner if args.pipeline else _tiny_runner)(args)
    args.out.mkdir(parents=True, exist_ok=True)
    ck = args.out / "checkpoint.pt"
    if args.restart:
        ck.unlink(missing_ok=True)
    with torch.no_grad():
        result = calibrate(transformer, run, config, checkpoint=ck, progress=not args.quiet)
    paths = result.write(args.out)
    report = result.report()
    print(f"overall sparsity {report['sparsity']:.1%} ({args.dense_steps} dense steps)")
    print("window      sparsity  mean MSE   chosen")
    for c in report["candidates"]:
        w = "x".join(map(str, c["window"]))
        print(f"{w:<11} {c['sparsity']:>7.1%}  {c['mean_error']:.3e}  {c['chosen']:>6}")
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0


def add_video_commands(sub) -> None:
    video = sub.add_parser("video", help="sparse attention in video DiTs: presets, check, schema")
    cmds = video.add_subparsers(dest="video_command", required=True, metavar="SUBCOMMAND")
    p = cmds.add_parser("presets", help="list the named strategies and their sparsity")
    p.set_defaults(func=_presets)
    p = cmds.add_parser(
        "check", help="validate a strategy file (and its fit to a model's layers and heads)"
    )
    p.add_argument("strategy", help="strategy JSON file or preset name")
    p.add_argument("--layers", type=int, default=None, help="the model's attention layers")
    p.add_argument("--heads", type=int, default=None, help="the model's heads")
    p.add_argument("--canvas", type=parse_dims, default=None, help="latent canvas to check")
    p.set_defaults(func=_check)
    p = cmds.add_parser("schema", help="print the strategy JSON schema")
    p.set_defaults(func=_schema)


def _presets(args) -> int:
    from hasten.video.presets import PRESETS

    print("name                               kind           canvas     tile   sparsity")
    for name, s in PRESETS.items():
        canvas = "x".join(map(str, s.canvas)) if s.canvas else "any"
        if s.canvas:
            sp = f"{s.pattern(s.dense_steps, 0).sparsity(s.layout(s.canvas)):.1%}"
            note = f" ({s.dense_steps} dense steps)" if s.dense_steps else ""
        else:
            sp, note = "-", ""
        tile = "x".join(map(str, s.tile))
        print(f"{name:<34} {s.kind:<14} {canvas:<10} {tile:<6} {sp}{note}")
    return 0


def _check(args) -> int:
    from hasten.video.strategy import load_strategy

    s = load_strategy(args.strategy)
    if (args.layers is None) != (args.heads is None):
        raise ValueError("give both --layers and --heads, or neither")
    if args.layers is not None:
        s.check_model(args.layers, args.heads)
    canvas = args.canvas or s.canvas
    if canvas is not None:
        layers = getattr(s, "layers", None) or args.layers or 1
        s.validate_canvas(canvas, layers)
    print(f"ok: {s.kind} strategy, tile {'x'.join(map(str, s.tile))}, {s.dense_steps} dense steps")
    return 0


def _schema(args) -> int:
    from hasten.video.strategy import SCHEMA

    json.dump(SCHEMA, sys.stdout, indent=1)
    print()
    return 0
