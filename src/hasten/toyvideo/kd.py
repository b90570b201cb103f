"""Stage 3: knowledge distillation of the sparse few-step student from the dense one.

Loss = output MSE (the velocities) + ``attention_weight`` x the mean over layers of the
MSE between sparse and dense attention outputs (Efficient-vDiT's output- and
attention-level losses), at the student's sampling times on noised real clips.
"""

from __future__ import annotations

import torch

from hasten.attn import Pattern
from hasten.toyvideo.consistency import student_times
from hasten.toyvideo.flow import interpolate
from hasten.toyvideo.loop import Budget, Checkpointed, optimizer_step, run_loop
from hasten.toyvideo.model import VideoDiT
from hasten.toyvideo.train import TrainConfig, autocast, batch_seed, make_optimizer
from hasten.toyvideo.world import attributes_to_tokens, sample_clips


def _record(model: VideoDiT, on: bool) -> None:
    for b in model.blocks:
        b.record = on
        b.last_attention = None


def kd_loss(
    sparse: VideoDiT,
    dense: VideoDiT,
    x_t: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    attention_weight: float,
) -> torch.Tensor:
    """Output plus attention-level distillation loss of ``sparse`` against ``dense``."""
    _record(sparse, True)
    _record(dense, True)
    try:
        with torch.no_grad():
            v_dense = dense(x_t, t, text)
            a_dense = [b.last_attention for b in dense.blocks]
        v = sparse(x_t, t, text)
        a_sparse = [b.last_attention for b in sparse.blocks]
    finally:
        _record(sparse, False)
        _record(dense, False)
    loss = (v.float() - v_dense.float()).pow(2).mean()
    if attention_weight:
        attn = sum(
            (a.float() - b.float()).pow(2).mean() for a, b in zip(a_sparse, a_dense, strict=True)
        )
        loss = loss + attention_weight * attn / len(a_sparse)
    return loss


def distill_sparse(
    dense: VideoDiT,
    sparse: VideoDiT,
    patterns: list[Pattern],
    segments: int,
    budget: Budget,
    cfg: TrainConfig,
    device,
    attention_weight: float = 0.5,
    checkpoint=None,
    every: int = 0,
    log=print,
) -> list[float]:
    """Train ``sparse`` (with ``patterns``) to match the dense few-step model ``dense``."""
    dense.to(device).eval().requires_grad_(False)
    sparse.to(device).train()
    sparse.set_patterns(patterns)
    opt, sched = make_optimizer(sparse.parameters(), cfg)
    times = student_times(segments)[:-1]  # the times the student is evaluated at
    g = torch.Generator().manual_seed(cfg.seed)
    world = sparse.cfg.world

    def step_fn(step: int) -> torch.Tensor:
        x0, attrs = sample_clips(cfg.batch, batch_seed(cfg.seed, 4, step), world, device)
        text = attributes_to_tokens(attrs).to(device)
        t = times[torch.randint(len(times), (cfg.batch,), generator=g)].to(device)
        x_t = interpolate(x0, torch.randn_like(x0), t)
        with autocast(device):
            loss = kd_loss(sparse, dense, x_t, t, text, attention_weight)
        optimizer_step(loss, sparse, opt, sched, cfg.grad_clip)
        return loss

    parts = Checkpointed(checkpoint, student=sparse, opt=opt, sched=sched)
    _, losses = run_loop("stage 3 sparse KD", step_fn, budget, parts, every, log=log)
    sparse.eval()
    return losses
