"""Quality and speed of a model on a fixed prompt set: the numbers the results table shows."""

from __future__ import annotations

import torch

from hasten.toyvideo.metric import ClipClassifier, measure
from hasten.toyvideo.model import VideoDiT
from hasten.toyvideo.sampling import generate, time_generation
from hasten.toyvideo.world import WorldConfig, all_attributes, render


def eval_prompts(n: int) -> torch.Tensor:
    """``n`` attribute rows cycling through all 144 captions (balanced)."""
    allp = all_attributes()
    return allp[torch.arange(n) % allp.shape[0]]


def real_clips(attrs: torch.Tensor, world: WorldConfig, seed: int = 12_345) -> torch.Tensor:
    return render(attrs, torch.Generator().manual_seed(seed), world)


def evaluate(
    model: VideoDiT,
    classifier: ClipClassifier,
    attrs: torch.Tensor,
    real: torch.Tensor,
    steps: int,
    guidance: float = 1.0,
    seed: int = 0,
    time_batch: int = 1,
    repeats: int = 5,
) -> dict:
    """Prompt adherence, Frechet distance and generation time of one setting."""
    clips = generate(model, attrs, steps, guidance, seed=seed)
    q = measure(classifier, clips, attrs, real)
    seconds = time_generation(model, attrs[:time_batch], steps, guidance, repeats=repeats)
    density = [float(p.density(model.cfg.layout)) for p in model.patterns]
    return {
        "steps": steps,
        "guidance": guidance,
        **q.to_dict(),
        "seconds": seconds,
        "time_batch": time_batch,
        "attention_density": sum(density) / len(density),
        "n": int(attrs.shape[0]),
    }
