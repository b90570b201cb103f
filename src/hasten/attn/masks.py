"""Token-level truth: key padding, the dense oracle mask and FlexAttention's mask_mod."""

from __future__ import annotations

import torch

from hasten.attn.block_table import cells
from hasten.attn.layout import VideoLayout


def key_valid(
    layout: VideoLayout, text_lengths: torch.Tensor | None, batch: int = 1
) -> torch.Tensor:
    """``[B, S]`` bool: key position holds a real token (not text padding)."""
    valid = torch.ones(batch, layout.seq_len, dtype=torch.bool)
    if text_lengths is not None:
        text = layout.text_slice
        pad_from = text.start + torch.as_tensor(text_lengths).reshape(-1, 1).cpu()
        pos = torch.arange(layout.seq_len)[None]
        valid &= ~((pos >= pad_from) & (pos < text.stop))
    return valid


def attention_mask(
    layout: VideoLayout, pattern, text_lengths: torch.Tensor | None = None, batch: int = 1
) -> torch.Tensor:
    """The oracle: ``[B, H or 1, S, S]`` bool, pattern mask and key padding, token by token."""
    m = pattern.mask(layout)
    m = m[None, None] if m.dim() == 2 else m[None]
    return m & key_valid(layout, text_lengths, batch)[:, None, None, :]


def mask_mod(layout: VideoLayout, pattern, text_lengths=None, *, device="cpu"):
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` equal to :func:`attention_mask`.

    It looks the pattern up at cell granularity (``keep[h, cell[q], cell[kv]]``): exact, and
    small enough to live on the device (e.g. 24 x 1801^2 bits for HunyuanVideo 720p).
    """
    c = cells(layout, pattern.frame_level)
    keep = pattern.keep(c.coords, c.coords, layout).to(device)
    cell = c.of_token.to(device)
    per_head = pattern.heads is not None

    if text_lengths is None:

        def sparse_mask(b, h, q_idx, kv_idx):
            return keep[h if per_head else 0, cell[q_idx], cell[kv_idx]]

        return sparse_mask

    valid = key_valid(layout, text_lengths, len(text_lengths)).to(device)

    def sparse_padded_mask(b, h, q_idx, kv_idx):
        return keep[h if per_head else 0, cell[q_idx], cell[kv_idx]] & valid[b, kv_idx]

    return sparse_padded_mask
