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
    # The full window's error is 0: leave it blank rather than stretch the colour scale.
    log_err = torch.where(err > 0, torch.log10(err.clamp_min(1e-300)), torch.nan)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    panels = [  # (data [rows, cols], x label, y label, title, colour map)
        (chosen.mean(dim=0).T, "layer", "head", "sparsity per head (searched steps)", "viridis"),
        (log_err.T, "layer", "candidate window", "log10 MSE to dense (blank: 0)", "magma"),
        (per_step.T, "denoising step", "layer", "sparsity per layer and step", "viridis"),
    ]
    for ax, (data, xlabel, ylabel, title, cmap) in zip(axes, panels, strict=True):
        im = ax.imshow(data.numpy(), aspect="auto", origin="lower", cmap=cmap)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.yaxis.get_major_locator().set_params(integer=True)
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
