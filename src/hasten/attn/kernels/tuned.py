"""Kernel configs tuned per card, with their provenance (made by benchmarks/tune_triton.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hasten.attn.kernels.ops import KernelConfig, PassConfig


@dataclass(frozen=True)
class Tuned:
    """A config and where it came from: the card, dtype and date it was measured on."""

    config: KernelConfig
    card: str
    capability: tuple[int, int]
    dtype: str
    date: str
    source: str


#: (card name as torch reports it, head dim) -> tuned config.
TUNED: dict[tuple[str, int], Tuned] = {
    ("NVIDIA H100 80GB HBM3", 128): Tuned(
        # 128x128 chunks through TMA: 29.5 ms vs 34.5 ms (128x64, pointers) at HunyuanVideo
        # 720p (3,3,3). Backward, of eight: dk/dv 64x64 with 4 warps (255 registers, 14
        # spilled, still faster than the spill-free 8-warp version), dq 128x64 with 8 warps.
        config=KernelConfig(
            fwd=PassConfig(128, 128, 8, 3),
            dkdv=PassConfig(64, 64, 4, 2),
            dq=PassConfig(128, 64, 8, 2),
            tma=True,
        ),
        card="NVIDIA H100 80GB HBM3",
        capability=(9, 0),
        dtype="bf16",
        date="2026-11-28",
        source="benchmarks/results/triton-tuning-nvidia-h100-80gb-hbm3.json",
    ),
}


def tuned_for(device: torch.device, head_dim: int) -> Tuned | None:
    """The entry for this card and head dim; else one tuned on a card of the same compute
    capability (an H200 runs the H100's config: same SM, same shared memory and registers)."""
    if device.type != "cuda":
        return None
    exact = TUNED.get((torch.cuda.get_device_name(device), head_dim))
    if exact is not None:
        return exact
    cc = torch.cuda.get_device_capability(device)
    return next((t for (_, d), t in TUNED.items() if d == head_dim and t.capability == cc), None)


def config_for(device: torch.device, head_dim: int) -> KernelConfig:
    """The tuned config for this card and head dim, else the defaults (which run anywhere)."""
    tuned = tuned_for(device, head_dim)
    return KernelConfig() if tuned is None else tuned.config
