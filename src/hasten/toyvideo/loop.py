"""A budgeted, resumable training loop: step and wall-clock limits, tqdm, periodic checkpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm


def optimizer_step(loss, model, opt, sched, grad_clip: float) -> None:
    """One update: backward, clip the gradient norm, step the optimizer and its schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()


@dataclass(frozen=True)
class Budget:
    """At most ``steps`` optimizer steps and, if given, ``seconds`` of wall clock per call."""

    steps: int
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds must be > 0 or None, got {self.seconds}")


class Checkpointed:
    """Modules and optimizers saved together with the step and the loss history."""

    def __init__(self, path: Path | None, **parts) -> None:
        self.path = None if path is None else Path(path)
        self.parts = parts

    def save(self, step: int, losses: list[float]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.state_dict() for k, v in self.parts.items()}
        tmp = self.path.with_suffix(".tmp")
        torch.save({"step": step, "losses": losses, "state": state}, tmp)
        tmp.replace(self.path)  # never leave a half-written checkpoint behind

    def load(self) -> tuple[int, list[float]]:
        """Restore the parts if a checkpoint exists; the step to continue from and the losses."""
        if self.path is None or not self.path.exists():
            return 0, []
        payload = torch.load(self.path, map_location="cpu", weights_only=True)
        for k, v in self.parts.items():
            v.load_state_dict(payload["state"][k])
        return int(payload["step"]), list(payload["losses"])


def run_loop(
    name: str,
    step_fn: Callable[[int], torch.Tensor],
    budget: Budget,
    checkpoint: Checkpointed | None = None,
    every: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[int, list[float]]:
    """Run ``step_fn(step)`` (it returns the loss) until the budget is spent.

    Resumes from ``checkpoint`` when it exists and saves it every ``every`` steps and at the
    end. Returns the steps done in total and the loss of every step.
    """
    start, losses = checkpoint.load() if checkpoint else (0, [])
    if start:
        log(f"{name}: resuming at step {start}")
    pending: list[torch.Tensor] = []  # losses stay on the device until read in bulk

    def flush() -> None:
        if pending:
            losses.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()

    t0 = time.monotonic()
    step = start
    with tqdm(total=budget.steps, initial=start, desc=name, leave=False, mininterval=2) as bar:
        while step < budget.steps:
            if budget.seconds is not None and time.monotonic() - t0 > budget.seconds:
                log(f"{name}: time budget of {budget.seconds:.0f} s reached at step {step}")
                break
            pending.append(step_fn(step).detach())
            step += 1
            bar.update()
            if len(pending) >= 50:
                flush()
                bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
            if checkpoint and every and step % every == 0:
                flush()
                checkpoint.save(step, losses)
    flush()
    if checkpoint:
        checkpoint.save(step, losses)
    elapsed = time.monotonic() - t0
    tail = losses[-min(len(losses), 50) :]
    mean = sum(tail) / max(len(tail), 1)
    log(f"{name}: {step - start} steps in {elapsed:.1f} s, recent loss {mean:.4f}")
    return step, losses
