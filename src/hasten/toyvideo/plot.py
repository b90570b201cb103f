"""Loss curves of the training phases as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth(values: list[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < window or window < 2:
        return v
    return np.convolve(v, np.ones(window) / window, mode="valid")


def plot_losses(curves: dict[str, list[float]], path: Path | str) -> Path:
    """One panel per phase (log-scale loss against step, smoothed), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {k: v for k, v in curves.items() if v}
    n = max(len(curves), 1)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items(), strict=False):
        window = max(1, len(values) // 50)
        ax.plot(np.arange(len(values)), values, color="0.8", lw=0.5)
        s = smooth(values, window)
        ax.plot(np.arange(len(s)) + (len(values) - len(s)), s, lw=1.5)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
