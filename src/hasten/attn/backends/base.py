"""The interface every attention backend implements, and the registry that picks one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from hasten.attn.layout import VideoLayout


@dataclass(frozen=True)
class Problem:
    """One attention call as a backend sees it (inputs already validated)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: VideoLayout
    pattern: object
    text_lengths: torch.Tensor | None
    scale: float

    @property
    def device(self) -> torch.device:
        return self.q.device


class Backend:
    """A way to compute sparse attention. Subclasses set ``name`` and ``rank``.

    ``rank`` maps a device type to the backend's place in ``backend="auto"``'s order there
    (lower runs first); a device type missing from it is never picked automatically.
    """

    name: str = ""
    rank: ClassVar[dict[str, int]] = {}

    def unavailable(self, problem: Problem) -> str | None:
        """Why this backend cannot run ``problem`` (``None`` when it can)."""
        return None

    def forward(self, problem: Problem) -> torch.Tensor:
        raise NotImplementedError


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` to the registry (a later registration under the same name replaces it)."""
    _REGISTRY[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *_REGISTRY]}")
    return _REGISTRY[name]


def rank_backends(problem: Problem) -> list[tuple[Backend, str | None]]:
    """Every backend with the reason it cannot run (``None`` if it can), auto's order first."""
    dev = problem.device.type
    ordered = sorted(_REGISTRY.values(), key=lambda b: b.rank.get(dev, 1 << 30))
    out = []
    for b in ordered:
        reason = b.unavailable(problem)
        if reason is None and dev not in b.rank:
            reason = f"not picked automatically on {dev} (ask for it by name)"
        out.append((b, reason))
    return out


def select_backend(problem: Problem) -> Backend:
    """The first backend in auto's order that can run ``problem``."""
    ranked = rank_backends(problem)
    for b, reason in ranked:
        if reason is None:
            return b
    why = "; ".join(f"{b.name}: {r}" for b, r in ranked)
    raise RuntimeError(f"no attention backend can run this call ({why})")
