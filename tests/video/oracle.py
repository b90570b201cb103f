"""The float64 ground truth of a video attention layer in the model's own (raster) order."""

from __future__ import annotations

import torch

from hasten.attn import VideoLayout, attention_mask
from tests.attn.numerics import naive_attention


def raster_mask(layout: VideoLayout, pattern, text_lengths=None, batch: int = 1) -> torch.Tensor:
    """``[B, H or 1, S, S]`` oracle mask with rows and columns in raster (model) order."""
    mask = attention_mask(layout, pattern, text_lengths, batch)
    pos = layout.from_tiles(torch.arange(layout.seq_len), dim=0)  # raster i -> tile position
    return mask[:, :, pos][:, :, :, pos]


def oracle(q, k, v, layout: VideoLayout, pattern, text_lengths=None) -> torch.Tensor:
    """float64 attention of raster-order ``[B, S, H, D]`` inputs under ``pattern``."""
    mask = raster_mask(layout, pattern, text_lengths, q.shape[0])
    out = naive_attention(*(x.transpose(1, 2) for x in (q, k, v)), mask)
    return out.transpose(1, 2)


def torch_same_dtype(q, k, v, layout: VideoLayout, pattern, text_lengths=None) -> torch.Tensor:
    """PyTorch's SDPA with the same mask in the inputs' dtype: its own error is the yardstick."""
    mask = raster_mask(layout, pattern, text_lengths, q.shape[0]).to(q.device)
    args = (x.transpose(1, 2) for x in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(*args, attn_mask=mask).transpose(1, 2)
