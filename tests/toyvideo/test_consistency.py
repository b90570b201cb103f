"""Consistency-distillation targets against flows whose trajectories are known exactly."""

from __future__ import annotations

import pytest
import torch

from hasten.toyvideo.consistency import (
    ConsistencyConfig,
    consistency_target,
    segment_floor,
    student_times,
)

# Data x0 ~ N(0, sigma^2) per coordinate, x_t = (1 - t) x0 + t * noise: x_t ~ N(0, tau(t)^2)
# with tau(t)^2 = (1 - t)^2 sigma^2 + t^2. The exact flow velocity is
# v(x, t) = (t - (1 - t) sigma^2) / tau(t)^2 * x, and the ODE maps x_t to x_s = x_t tau(s)/tau(t).


def tau(t, sigma):
    return ((1 - t) ** 2 * sigma**2 + t**2).sqrt()


def gaussian_velocity(sigma):
    def v(x, t, text):
        tt = t.reshape(-1, *([1] * (x.dim() - 1)))
        return (tt - (1 - tt) * sigma**2) / tau(tt, sigma) ** 2 * x

    return v


def exact_jump_velocity(sigma, segments):
    """The ideal student: the velocity of the exact jump from (x, t) to its segment's end."""

    def v(x, t, text):
        s = segment_floor(t, segments).reshape(-1, *([1] * (x.dim() - 1)))
        tt = t.reshape(s.shape)
        return (x * tau(s, sigma) / tau(tt, sigma) - x) / (s - tt)

    return v


def test_segment_floor_and_student_times():
    t = torch.tensor([1.0, 0.75, 0.74, 0.51, 0.5, 0.26, 0.25, 0.01])
    assert torch.equal(segment_floor(t, 4), torch.tensor([0.75, 0.5, 0.5, 0.5, 0.25, 0.25, 0, 0]))
    assert torch.allclose(student_times(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(ValueError, match="multiple"):
        ConsistencyConfig(segments=4, teacher_steps=50)


def test_straight_flow_targets_are_exact():
    # sigma = 0: all data at the origin, trajectories are straight lines to it, so one Euler
    # step of the teacher is exact and the target is the exact jump x_t * s / t.
    N, S = 48, 4
    n = torch.arange(1, N + 1, dtype=torch.float64)
    t = n / N
    x = torch.randn(N, 3, 2, 4, 4, dtype=torch.float64)
    sigma = torch.tensor(0.0, dtype=torch.float64)
    v = consistency_target(
        gaussian_velocity(sigma), exact_jump_velocity(sigma, S), x, t, 1 / N, S, None
    )
    s = segment_floor(t, S).reshape(-1, 1, 1, 1, 1)
    tt = t.reshape(s.shape)
    x_s = x + (s - tt) * v
    torch.testing.assert_close(x_s, x * s / tt, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_curved_flow_targets_converge_to_the_exact_jump(sigma):
    # Curved trajectories: the teacher's Euler step errs by O(dt^2), so the target's error
    # must shrink about 4x when dt halves, and be small at the default resolution.
    S = 4
    sig = torch.tensor(sigma, dtype=torch.float64)
    errors = []
    for N in (24, 48, 96):
        n = torch.arange(1, N + 1, dtype=torch.float64)
        t = n / N
        x = torch.randn(N, 8, dtype=torch.float64)
        v = consistency_target(
            gaussian_velocity(sig), exact_jump_velocity(sig, S), x, t, 1 / N, S, None
        )
        s = segment_floor(t, S)[:, None]
        x_s = x + (s - t[:, None]) * v
        exact = x * tau(s, sig) / tau(t[:, None], sig)
        errors.append(float(((x_s - exact).abs() / x.abs()).max()))
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3, errors
    assert errors[1] < 5e-3, errors


def test_at_the_segment_end_the_target_is_the_teacher_step():
    # t' = s: the target network is not consulted; the target is the teacher's velocity.
    N, S = 8, 4
    t = torch.tensor([0.25 + 1 / N, 1 / N], dtype=torch.float64)
    x = torch.randn(2, 5, dtype=torch.float64)
    sig = torch.tensor(1.0, dtype=torch.float64)

    def poisoned(x, t, text):
        return torch.full_like(x, float("nan"))

    v = consistency_target(gaussian_velocity(sig), poisoned, x, t, 1 / N, S, None)
    torch.testing.assert_close(v, gaussian_velocity(sig)(x, t, None))
