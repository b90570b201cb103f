"""The calibration report's picture: chosen sparsity per (layer, head) and error per candidate."""

from __future__ import annotations

from pathlib import Path

import torch


def draw_calibration(calibration, path: str | Path) -> Path:
    """Three heatmaps: sparsity per (layer, head) over the searched steps, log10 error per
    (layer, candidate), and sparsity per (step, layer) with the dense first steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = calibration
    sp = torch.tensor(c.candidate_sparsity, dtype=torch.float64)
    chosen = sp[c.choice]  # [searched steps, layers, heads]
    dense = torch.zeros(c.config.dense_steps, *chosen.shape[1:], dtype=torch.float64)
    per_step = torch.cat([dense, chosen]).mean(dim=2)  # [steps, layers]
    err = c.errors.to(torch.float64).mean(dim=(0, 3))  # [layers, candidates]
    log_err = torch.log10(err.clamp_min(1e-30))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    panels = [
        (chosen.mean(dim=0).T, "head", "layer", "sparsity per head (searched steps)", "viridis"),
        (log_err.T, "candidate window", "layer", "log10 MSE to dense", "magma"),
        (per_step.T, "denoising step", "layer", "sparsity per step", "viridis"),
    ]
    for ax, (data, ylabel, xlabel, title, cmap) in zip(axes, panels, strict=True):
        im = ax.imshow(data.numpy(), aspect="auto", origin="lower", cmap=cmap)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        fig.colorbar(im, ax=ax)
    axes[1].set_yticks(range(len(c.candidates)), ["x".join(map(str, w)) for w in c.candidates])
    fig.suptitle(
        f"{c.model} mask search: canvas {'x'.join(map(str, c.canvas))}, overall sparsity "
        f"{c.sparsity:.1%} ({c.config.dense_steps} of {c.config.steps} steps dense)"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
