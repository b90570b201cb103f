"""Stage 2: layer-wise sparsity search, the sparsest pattern per layer within an error bound.

For each layer alone (every other layer dense), each candidate pattern is scored by the
relative error of the few-step model's velocity along its own dense trajectory; the layer
gets the sparsest candidate whose error is at most ``threshold`` (Efficient-vDiT's r).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hasten.attn import Dense, FrameTiles, Pattern, SlidingTile, VideoLayout
from hasten.toyvideo.checkpoint import pattern_from_dict, pattern_to_dict
from hasten.toyvideo.flow import Velocity
from hasten.toyvideo.model import VideoDiT
from hasten.toyvideo.train import autocast

FAMILIES = ("frame-tiles", "sta")


def candidates(family: str, layout: VideoLayout) -> list[Pattern]:
    """The family's patterns on this layout, sparsest first, ending with dense."""
    T = layout.grid[0]
    if family == "frame-tiles":
        # k >= T - 1 keeps every pair: that is dense.
        pats: list[Pattern] = [FrameTiles(k) for k in range(T - 1)]
    elif family == "sta":
        pats = [SlidingTile((w, layout.grid[1], layout.grid[2])) for w in range(1, T, 2)]
    else:
        raise ValueError(f"unknown sparsity family {family!r}; use one of {list(FAMILIES)}")
    pats = sorted(pats, key=lambda p: p.density(layout))
    return [*pats, Dense()]


@dataclass(frozen=True)
class LayerChoice:
    layer: int
    pattern: Pattern
    error: float
    density: float
    #: Error of every candidate tried, in the order tried.
    errors: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    """Per-layer attention patterns, as stage 2 found them (a strategy file)."""

    family: str
    threshold: float
    layers: tuple[LayerChoice, ...]

    @property
    def patterns(self) -> list[Pattern]:
        return [c.pattern for c in self.layers]

    @property
    def density(self) -> float:
        """Mean kept fraction over layers (text included)."""
        return sum(c.density for c in self.layers) / len(self.layers)

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "threshold": self.threshold,
            "layers": [
                {
                    "layer": c.layer,
                    **pattern_to_dict(c.pattern),
                    "error": c.error,
                    "density": c.density,
                    "errors": c.errors,
                }
                for c in self.layers
            ],
        }

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> Strategy:
        try:
            d = json.loads(Path(path).read_text())
            layers = tuple(
                LayerChoice(
                    x["layer"], pattern_from_dict(x), x["error"], x["density"], x.get("errors", {})
                )
                for x in d["layers"]
            )
            return cls(d["family"], d["threshold"], layers)
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{path} is not a strategy file written by hasten distill: {err}"
            ) from err


def _label(p: Pattern) -> str:
    if isinstance(p, FrameTiles):
        return f"frame-tiles k={p.global_frames}"
    if isinstance(p, SlidingTile):
        return f"sta {'x'.join(map(str, p.window))}"
    return "dense"


@torch.no_grad()
def search(
    model: VideoDiT,
    velocity: Velocity,
    noise: torch.Tensor,
    text: torch.Tensor,
    times: torch.Tensor,
    threshold: float,
    family: str = "frame-tiles",
    log=print,
) -> Strategy:
    """Pick per layer the sparsest candidate with relative velocity error <= ``threshold``.

    ``velocity`` is ``model`` as it is sampled (it may wrap it, e.g. with guidance);
    ``times`` are the few-step sampling times; ``noise`` and ``text`` the calibration batch.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    layout = model.cfg.layout
    cands = candidates(family, layout)
    dense = [Dense()] * len(model.blocks)
    device = noise.device
    model.set_patterns(dense)
    # The dense trajectory: the states each sampling step sees, and the velocities there.
    states, refs = [], []
    x = noise
    with autocast(device):
        for t, t_next in itertools.pairwise(times):
            tb = t.expand(x.shape[0])
            v = velocity(x, tb, text).float()
            states.append((x, tb))
            refs.append(v)
            x = x + (t_next - t) * v

    def error() -> float:
        num = den = 0.0
        with autocast(device):
            for (xs, tb), ref in zip(states, refs, strict=True):
                v = velocity(xs, tb, text).float()
                num += float((v - ref).pow(2).sum())
                den += float(ref.pow(2).sum())
        return (num / max(den, 1e-12)) ** 0.5

    choices = []
    for layer in range(len(model.blocks)):
        tried: dict[str, float] = {}
        chosen, chosen_err = cands[-1], 0.0
        for cand in cands[:-1]:
            pats = list(dense)
            pats[layer] = cand
            model.set_patterns(pats)
            err = error()
            tried[_label(cand)] = err
            if err <= threshold:
                chosen, chosen_err = cand, err
                break
        density = float(chosen.density(layout))
        choices.append(LayerChoice(layer, chosen, chosen_err, density, tried))
        log(f"  layer {layer}: {_label(chosen)} (error {chosen_err:.4f}, density {density:.2f})")
    model.set_patterns(dense)
    return Strategy(family, threshold, tuple(choices))
