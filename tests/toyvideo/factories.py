"""Tiny reference-model configs and checkpoints for CPU tests."""

from __future__ import annotations

from pathlib import Path

import torch

from hasten.toyvideo.checkpoint import save_model
from hasten.toyvideo.model import DiTConfig, VideoDiT

#: 8 frames of 32x32 in 2x8x8 patches: a 4x4x4 token canvas, 69 tokens with the caption.
TINY = DiTConfig(frames=8, size=32, patch=(2, 8, 8), dim=32, depth=2, heads=2)


def tiny_model(seed: int = 0, cfg: DiTConfig = TINY) -> VideoDiT:
    torch.manual_seed(seed)
    model = VideoDiT(cfg)
    # The output layer starts at zero (adaLN-Zero style); perturb it so outputs depend on
    # every layer and on the attention pattern.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


def tiny_checkpoint(path: Path, steps: int = 2, **meta) -> Path:
    save_model(path, tiny_model(), steps=steps, guidance=1.0, stage="test", **meta)
    return path
