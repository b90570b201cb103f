"""The world's quality metric: an attribute classifier, its accuracy and a Frechet distance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hasten.toyvideo.world import ATTRIBUTES


class ClipClassifier(nn.Module):
    """A small 3D CNN predicting count, colour, shape and direction of ``[B, 3, T, H, W]`` clips."""

    def __init__(self, width: int = 32, features: int = 64) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv3d(3, w, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)),
            nn.GELU(),
            nn.Conv3d(w, 2 * w, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * w),
            nn.GELU(),
            nn.Conv3d(2 * w, 3 * w, 3, stride=2, padding=1),
            nn.GroupNorm(8, 3 * w),
            nn.GELU(),
            nn.Conv3d(3 * w, 4 * w, 3, stride=(1, 2, 2), padding=1),
            nn.GELU(),
        )
        self.features = nn.Linear(4 * w, features)
        self.heads = nn.ModuleList(nn.Linear(features, len(v)) for v in ATTRIBUTES.values())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, features]``: the features the Frechet distance is taken on."""
        h = self.net(x)
        # Sum over space keeps the evidence for "how many"; mean over time keeps speed-free.
        h = h.sum(dim=(3, 4)).mean(dim=2) / 16
        return F.gelu(self.features(h))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.embed(x)
        return [head(f) for head in self.heads]


def classifier_loss(model: ClipClassifier, x: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return sum(F.cross_entropy(lg, attrs[:, i]) for i, lg in enumerate(logits)) / len(logits)


@dataclass(frozen=True)
class Quality:
    """Prompt adherence of generated clips as the classifier sees them."""

    #: Mean over the four attributes of the fraction predicted as the prompt asked.
    adherence: float
    #: Fraction of clips with all four attributes right.
    exact: float
    per_attribute: dict[str, float]
    #: Frechet distance between classifier features of generated and real clips.
    frechet: float

    def to_dict(self) -> dict:
        return {
            "adherence": self.adherence,
            "exact": self.exact,
            "per_attribute": self.per_attribute,
            "frechet": self.frechet,
        }


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fit to feature rows ``a`` and ``b`` (float64)."""
    if a.shape[0] < 2 or b.shape[0] < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"need >= 2 rows of equal width in each set, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    a, b = a.double().cpu(), b.double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(ca)
    cross = _sqrtm_psd(root_a @ cb @ root_a)
    return float((mu_a - mu_b).pow(2).sum() + ca.trace() + cb.trace() - 2 * cross.trace())


@torch.no_grad()
def measure(
    classifier: ClipClassifier,
    clips: torch.Tensor,
    attrs: torch.Tensor,
    real: torch.Tensor,
    batch: int = 64,
) -> Quality:
    """Score generated ``clips`` made for ``attrs`` against ``real`` clips of the same prompts."""
    classifier.eval()
    dev = next(classifier.parameters()).device

    def run(x):
        feats, preds = [], []
        for i in range(0, x.shape[0], batch):
            xb = x[i : i + batch].to(dev, torch.float32)
            f = classifier.embed(xb)
            feats.append(f.cpu())
            preds.append(torch.stack([h(f).argmax(-1) for h in classifier.heads], -1).cpu())
        return torch.cat(feats), torch.cat(preds)

    f_gen, pred = run(clips)
    f_real, _ = run(real)
    right = pred == attrs.cpu()
    per = {name: float(right[:, i].float().mean()) for i, name in enumerate(ATTRIBUTES)}
    return Quality(
        adherence=float(right.float().mean()),
        exact=float(right.all(-1).float().mean()),
        per_attribute=per,
        frechet=frechet_distance(f_gen, f_real),
    )
