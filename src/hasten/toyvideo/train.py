"""Training the quality classifier and the flow-matching teacher on the procedural world."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from hasten.toyvideo.checkpoint import EMA
from hasten.toyvideo.flow import flow_matching_loss
from hasten.toyvideo.loop import Budget, Checkpointed, optimizer_step, run_loop
from hasten.toyvideo.metric import ClipClassifier, classifier_loss
from hasten.toyvideo.model import VideoDiT
from hasten.toyvideo.world import WorldConfig, attributes_to_tokens, sample_clips


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the Triton kernels want half precision); nothing on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and data settings of one training phase."""

    batch: int = 64
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999
    #: Fraction of captions replaced by the null prompt (for classifier-free guidance).
    drop_text: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.lr <= 0 or self.warmup < 0:
            raise ValueError(
                f"need batch >= 1, lr > 0, warmup >= 0; got {self.batch}, {self.lr}, {self.warmup}"
            )
        if not 0 <= self.drop_text < 1:
            raise ValueError(f"drop_text must be in [0, 1), got {self.drop_text}")


def make_optimizer(params, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, object]:
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
    return opt, sched


def batch_seed(seed: int, phase: int, step: int) -> int:
    """A distinct, reproducible data seed per (run, phase, step)."""
    return (seed * 1_000_003 + phase * 7_919 + step) % (2**63)


def train_classifier(
    model: ClipClassifier,
    world: WorldConfig,
    budget: Budget,
    cfg: TrainConfig,
    device,
    log=print,
) -> list[float]:
    """Supervised training on freshly drawn clips (never the same clip twice)."""
    model.to(device).train()
    opt, sched = make_optimizer(model.parameters(), cfg)

    def step_fn(step: int) -> torch.Tensor:
        x, attrs = sample_clips(cfg.batch, batch_seed(cfg.seed, 1, step), world, device)
        with autocast(device):
            loss = classifier_loss(model, x, attrs.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    _, losses = run_loop("classifier", step_fn, budget, log=log)
    model.eval()
    return losses


def train_teacher(
    model: VideoDiT,
    budget: Budget,
    cfg: TrainConfig,
    device,
    checkpoint: Path | None = None,
    every: int = 0,
    log=print,
) -> tuple[VideoDiT, list[float]]:
    """Rectified-flow training; returns the EMA model (the one to sample) and the losses."""
    model.to(device).train()
    opt, sched = make_optimizer(model.parameters(), cfg)
    ema = EMA(model, cfg.ema)
    world = model.cfg.world
    g = torch.Generator().manual_seed(cfg.seed)

    def step_fn(step: int) -> torch.Tensor:
        x, attrs = sample_clips(cfg.batch, batch_seed(cfg.seed, 2, step), world, device)
        text = attributes_to_tokens(attrs)
        drop = torch.rand(cfg.batch, generator=g) < cfg.drop_text
        text = torch.where(drop[:, None], torch.zeros_like(text), text).to(device)
        with autocast(device):
            loss = flow_matching_loss(model, x, text)
        optimizer_step(loss, model, opt, sched, cfg.grad_clip)
        ema.update(model, step)
        return loss

    parts = Checkpointed(checkpoint, model=model, ema=ema.model, opt=opt, sched=sched)
    _, losses = run_loop("teacher", step_fn, budget, parts, every, log=log)
    return ema.model, losses
