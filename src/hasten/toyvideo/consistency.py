"""Stage 1: multi-step consistency distillation of the teacher's flow into a few-step student.

The teacher's trajectory from noise (t = 1) to data (t = 0) is cut into ``segments``
equal segments. Within a segment the student learns to jump from any point straight to
the segment's lower end (Efficient-vDiT, arXiv 2502.06155, after multi-step consistency
models). The student predicts a velocity ``v`` and the jump is ``x + (s - t) v``, so a
student sampled with one Euler step per segment makes exactly those jumps, and at the
start (student = teacher) it is the teacher sampled with ``segments`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hasten.toyvideo.flow import Velocity, guided, interpolate, time_grid
from hasten.toyvideo.loop import Budget, Checkpointed, optimizer_step, run_loop
from hasten.toyvideo.model import VideoDiT
from hasten.toyvideo.train import TrainConfig, autocast, batch_seed, make_optimizer
from hasten.toyvideo.world import attributes_to_tokens, sample_clips


@dataclass(frozen=True)
class ConsistencyConfig:
    """How the trajectory is cut and discretised."""

    #: Segments of the trajectory, i.e. sampling steps of the student.
    segments: int = 4
    #: Teacher ODE steps over the whole trajectory (a multiple of ``segments``).
    teacher_steps: int = 48
    #: Classifier-free guidance of the teacher; the student learns the guided flow.
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if self.segments < 1:
            raise ValueError(f"segments must be >= 1, got {self.segments}")
        if self.teacher_steps % self.segments:
            up = -(-self.teacher_steps // self.segments) * self.segments
            raise ValueError(
                f"teacher_steps {self.teacher_steps} is not a multiple of segments "
                f"{self.segments}; use e.g. {up}"
            )

    @property
    def per_segment(self) -> int:
        return self.teacher_steps // self.segments


def segment_floor(t: torch.Tensor, segments: int) -> torch.Tensor:
    """Lower end of the segment ``t`` jumps within: the largest boundary strictly below ``t``."""
    # A point exactly on a boundary starts the segment below it (that is where sampling
    # steps begin); the small offset keeps that exact in floating point.
    return (torch.ceil(t * segments - 1e-4) - 1).clamp(min=0) / segments


def consistency_target(
    teacher: Velocity,
    target_net: Velocity,
    x_t: torch.Tensor,
    t: torch.Tensor,
    dt: float,
    segments: int,
    text: torch.Tensor,
) -> torch.Tensor:
    """The velocity the student should predict at ``(x_t, t)``.

    One teacher Euler step from ``t`` to ``t' = t - dt``, then the target network's jump
    from ``t'`` to the segment's lower end ``s`` (none when ``t' == s``); the target is the
    velocity of the straight jump from ``x_t`` to that point.
    """
    view = (-1, *([1] * (x_t.dim() - 1)))
    s = segment_floor(t, segments)
    t_prev = t - dt
    x_prev = x_t + (-dt) * teacher(x_t, t, text).to(x_t.dtype)
    at_end = (t_prev - s).abs() < 1e-6
    jump = (s - t_prev).reshape(view) * target_net(x_prev, t_prev, text).to(x_t.dtype)
    x_s = x_prev + torch.where(at_end.reshape(view), torch.zeros_like(jump), jump)
    return (x_s - x_t) / (s - t).reshape(view)


def student_times(segments: int, device="cpu") -> torch.Tensor:
    """The student samples at the segment boundaries: ``1, ..., 1/segments, 0``."""
    return time_grid(segments, device)


def distill_consistency(
    teacher: VideoDiT,
    student: VideoDiT,
    cc: ConsistencyConfig,
    budget: Budget,
    cfg: TrainConfig,
    device,
    checkpoint=None,
    every: int = 0,
    log=print,
) -> list[float]:
    """Train ``student`` (initialised from the teacher) by consistency within segments."""
    teacher.to(device).eval().requires_grad_(False)
    student.to(device).train()
    opt, sched = make_optimizer(student.parameters(), cfg)
    teacher_v = guided(teacher, cc.guidance)
    g = torch.Generator().manual_seed(cfg.seed)
    N, dt = cc.teacher_steps, 1.0 / cc.teacher_steps
    world = student.cfg.world

    def target_net(x, t, text):
        # The target is the current student without gradient (the stop-gradient form).
        return student(x, t, text)

    def step_fn(step: int) -> torch.Tensor:
        x0, attrs = sample_clips(cfg.batch, batch_seed(cfg.seed, 3, step), world, device)
        text = attributes_to_tokens(attrs).to(device)
        n = torch.randint(1, N + 1, (cfg.batch,), generator=g)
        t = (n.float() / N).to(device)
        x_t = interpolate(x0, torch.randn_like(x0), t)
        with autocast(device):
            with torch.no_grad():
                target = consistency_target(teacher_v, target_net, x_t, t, dt, cc.segments, text)
            v = student(x_t, t, text)
            loss = (v.float() - target.float()).pow(2).mean()
        optimizer_step(loss, student, opt, sched, cfg.grad_clip)
        return loss

    parts = Checkpointed(checkpoint, student=student, opt=opt, sched=sched)
    _, losses = run_loop("stage 1 consistency", step_fn, budget, parts, every, log=log)
    student.eval()
    return losses
