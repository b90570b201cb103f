"""Generating clips from a model, timing it, and writing them as GIF (or MP4) files."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from hasten.toyvideo.flow import euler_sample, guided, time_grid
from hasten.toyvideo.model import VideoDiT
from hasten.toyvideo.train import autocast
from hasten.toyvideo.world import attributes_to_tokens


def initial_noise(n: int, model: VideoDiT, seed: int, device) -> torch.Tensor:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, cfg.frames, cfg.size, cfg.size, generator=g).to(device)


@torch.no_grad()
def generate(
    model: VideoDiT,
    attrs: torch.Tensor,
    steps: int,
    guidance: float = 1.0,
    seed: int = 0,
    batch: int = 64,
) -> torch.Tensor:
    """Clips ``[B, 3, T, H, W]`` in [-1, 1] for ``[B, 4]`` attributes, ``steps`` Euler steps."""
    device = next(model.parameters()).device
    velocity = guided(model, guidance)
    times = time_grid(steps, device)
    out = []
    for i in range(0, attrs.shape[0], batch):
        a = attrs[i : i + batch]
        noise = initial_noise(a.shape[0], model, seed + i, device)
        with autocast(device):
            x = euler_sample(velocity, noise, attributes_to_tokens(a).to(device), times)
        out.append(x.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_generation(
    model: VideoDiT,
    attrs: torch.Tensor,
    steps: int,
    guidance: float = 1.0,
    repeats: int = 5,
    warmup: int = 1,
) -> float:
    """Median wall-clock seconds to generate ``len(attrs)`` clips in one batch."""
    device = next(model.parameters()).device
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        generate(model, attrs, steps, guidance, seed=i, batch=attrs.shape[0])
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def to_frames(clip: torch.Tensor, scale: int = 1) -> np.ndarray:
    """``[3, T, H, W]`` in [-1, 1] -> ``[T, H*scale, W*scale, 3]`` uint8."""
    x = ((clip.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(1, 2, 3, 0)
    if scale > 1:
        x = x.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return x.numpy()


def write_video(clips: torch.Tensor, path: Path | str, fps: int = 8, scale: int = 4) -> Path:
    """Write one clip ``[3, T, H, W]`` or a row of clips ``[B, 3, T, H, W]`` side by side.

    ``.gif`` needs only Pillow; ``.mp4`` needs imageio with its ffmpeg plugin.
    """
    path = Path(path)
    if clips.dim() == 4:
        clips = clips[None]
    frames = np.concatenate([to_frames(c, scale) for c in clips], axis=2)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
        )
    elif suffix == ".mp4":
        try:
            import imageio.v3 as iio
        except ImportError:
            raise ValueError(
                f"writing {path.name} needs imageio[ffmpeg] (not installed); write a .gif instead"
            ) from None
        iio.imwrite(path, frames, fps=fps)
    else:
        raise ValueError(f"cannot write {path.name!r}: use a .gif (or .mp4 with imageio) path")
    return path
