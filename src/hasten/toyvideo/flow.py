"""Rectified flow: the training loss and the Euler sampler (with classifier-free guidance)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Convention: t = 0 is data, t = 1 is noise, x_t = (1 - t) x0 + t * noise, and the model
# predicts the velocity dx_t/dt = noise - x0.


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tt = t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - tt) * x0 + tt * noise


def sample_times(n: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """Logit-normal times (SD3): more weight in the middle of the path, where it is hardest."""
    z = torch.randn(n, generator=generator)
    return torch.sigmoid(z).to(device)


def flow_matching_loss(
    model: Velocity, x0: torch.Tensor, text: torch.Tensor, t: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error between predicted and true velocity on a random point of the path."""
    if t is None:
        t = sample_times(x0.shape[0], device=x0.device)
    noise = torch.randn_like(x0)
    v = model(interpolate(x0, noise, t), t, text)
    return (v.float() - (noise - x0).float()).pow(2).mean()


def guided(model: Velocity, guidance: float) -> Velocity:
    """Classifier-free guidance: ``v_null + g * (v_text - v_null)`` (null prompt = word id 0)."""
    if guidance == 1.0:
        return model

    def velocity(x, t, text):
        null = torch.zeros_like(text)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, null]))
        v_text, v_null = both.chunk(2)
        return v_null + guidance * (v_text - v_null)

    return velocity


def time_grid(steps: int, device="cpu") -> torch.Tensor:
    """``steps + 1`` times from 1 (noise) down to 0 (data), evenly spaced."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


@torch.no_grad()
def euler_sample(
    model: Velocity, noise: torch.Tensor, text: torch.Tensor, times: torch.Tensor
) -> torch.Tensor:
    """Integrate the flow ODE from ``times[0]`` to ``times[-1]`` with Euler steps."""
    x = noise
    for t, t_next in itertools.pairwise(times):
        tb = t.expand(x.shape[0])
        x = x + (t_next - t) * model(x, tb, text).to(x.dtype)
    return x
