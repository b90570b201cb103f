"""A video attention layer in the model's token order: dense fast path, head groups, tiles."""

from __future__ import annotations

import functools
from inspect import signature

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from hasten.attn.layout import VideoLayout
from hasten.attn.masks import key_valid
from hasten.attn.op import sparse_attention
from hasten.attn.patterns import Dense, FrameTiles, Pattern, SlidingTile

# cuDNN first: on Hopper it is SDPA's fastest dense kernel (256 vs 472 ms for flash at the
# HunyuanVideo shape on an H100, benchmarks/results/attention-*.json); SDPA's default order
# tries flash first.
_DENSE_ORDER = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


# Without set_priority (older torch) the list only allows backends, in SDPA's own order.
_PRIORITY = {"set_priority": True} if "set_priority" in signature(sdpa_kernel).parameters else {}


def sdpa(q, k, v, mask=None) -> torch.Tensor:
    """Dense SDPA on ``[B, H, S, D]``, preferring cuDNN on CUDA."""
    if q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with sdpa_kernel(_DENSE_ORDER, **_PRIORITY):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: VideoLayout,
    text_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense attention on ``[B, S, H, D]`` with text key padding, without a mask where possible.

    With text after the video, a sample's valid keys are a prefix of the sequence, so its
    padding is dropped by cutting k and v short: every query (padded text queries too) then
    sees exactly the keys the padding mask would leave, and SDPA runs its unmasked kernels.
    """
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    return _dense_heads_first(qt, kt, vt, layout, text_lengths).transpose(1, 2)


def _dense_heads_first(qt, kt, vt, layout: VideoLayout, text_lengths) -> torch.Tensor:
    """:func:`dense_attention` on ``[B, H, S, D]``."""
    if text_lengths is None:
        return sdpa(qt, kt, vt)
    if layout.text_first:
        mask = key_valid(layout, text_lengths, qt.shape[0])[:, None, None, :].to(qt.device)
        return sdpa(qt, kt, vt, mask)
    out = torch.empty_like(qt)
    valid = layout.video_tokens + text_lengths
    for n in valid.unique().tolist():
        rows = torch.nonzero(valid == n).squeeze(1)
        if len(rows) == qt.shape[0]:
            return sdpa(qt, kt[:, :, :n], vt[:, :, :n])
        rows = rows.to(qt.device)
        qs, ks, vs = (x.index_select(0, rows) for x in (qt, kt, vt))
        out.index_copy_(0, rows, sdpa(qs, ks[:, :, :n], vs[:, :, :n]))
    return out


@functools.lru_cache(maxsize=64)
def _order(layout: VideoLayout, device: str, inverse: bool) -> torch.Tensor:
    # The permutation as a gather index, kept on the device: moving it there on every call
    # would make each layer wait for the GPU to drain.
    pos = torch.arange(layout.seq_len)
    return (layout.from_tiles(pos, dim=0) if inverse else layout.to_tiles(pos, dim=0)).to(device)


@functools.lru_cache(maxsize=256)
def _heads(heads: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(heads, device=device)


def is_full(pattern: Pattern, layout: VideoLayout) -> bool:
    """Whether ``pattern`` (one rule for all heads) keeps every pair on ``layout``."""
    if isinstance(pattern, Dense):
        return True
    if isinstance(pattern, SlidingTile) and pattern.heads is None:
        return all(w >= n for w, n in zip(pattern.window, layout.grid, strict=True))
    if isinstance(pattern, FrameTiles) and pattern.heads is None:
        # Frame T-1 keeps itself and every j < k: with k >= T-1 that is every frame.
        return pattern.global_frames >= layout.canvas[0] - 1
    return False


def head_groups(pattern: Pattern, heads: int) -> list[tuple[Pattern, list[int] | None]]:
    """Split a per-head pattern into one-rule patterns and the heads using each (``None``: all).

    Strategies pick from a few candidate windows, so the groups are few and each group's
    kernel tables are cached across layers and steps.
    """
    rules = pattern.head_rules()
    if rules is None:
        return [(pattern, None)]
    if len(rules) != heads:
        raise ValueError(
            f"{pattern!r} has {len(rules)} per-head entries but the layer has {heads} heads"
        )
    groups: dict[Pattern, list[int]] = {}
    for h, rule in enumerate(rules):
        groups.setdefault(rule, []).append(h)
    if len(groups) == 1:
        return [(rules[0], None)]
    return list(groups.items())


def video_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: VideoLayout,
    pattern: Pattern,
    text_lengths: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of raster-order ``[B, S, H, D]`` q, k, v under ``pattern``; same order out.

    Tokens are permuted into tiles for the sparse kernels and back; heads whose rule keeps
    everything run dense SDPA instead.
    """
    groups = head_groups(pattern, q.shape[2])
    if all(is_full(p, layout) for p, _ in groups):
        return dense_attention(q, k, v, layout, text_lengths)
    if q.shape[1] != layout.seq_len:
        raise ValueError(f"{q.shape[1]} tokens do not fit the layout ({layout})")
    device = str(q.device)
    # One gather both permutes into tiles and puts heads first: the Triton kernel loads k
    # and v through TMA only from contiguous [B, H, S, D]; from the transposed view of
    # [B, S, H, D] it falls back to pointer loads (at 128x128 chunks about as fast on an
    # H100, but the tuned config is chosen for the TMA path), at the same cost of one copy.
    to_tiles = _order(layout, device, inverse=False)
    qt, kt, vt = (x.transpose(1, 2).index_select(2, to_tiles) for x in (q, k, v))
    out = heads_first_attention(qt, kt, vt, layout, pattern, text_lengths, backend=backend)
    return out.transpose(1, 2).index_select(1, _order(layout, device, inverse=True))


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: VideoLayout,
    pattern: Pattern,
    text_lengths: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`video_attention` for ``[B, S, H, D]`` tensors already in tile-major order."""
    args = (x.transpose(1, 2) for x in (q, k, v))
    out = heads_first_attention(*args, layout, pattern, text_lengths, backend=backend)
    return out.transpose(1, 2)


def heads_first_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: VideoLayout,
    pattern: Pattern,
    text_lengths: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`tiled_attention` on ``[B, H, S, D]`` (the kernels' layout: pass it contiguous)."""
    if q.shape[2] != layout.seq_len:
        raise ValueError(f"{q.shape[2]} tokens do not fit the layout ({layout})")

    def run(p: Pattern, qs, ks, vs):
        if is_full(p, layout):  # dense attention does not care about the token order
            return _dense_heads_first(qs, ks, vs, layout, text_lengths)
        return sparse_attention(qs, ks, vs, layout, p, text_lengths=text_lengths, backend=backend)

    groups = head_groups(pattern, q.shape[1])
    if len(groups) == 1:
        return run(groups[0][0], q, k, v)
    dense = {h for p, heads in groups if is_full(p, layout) for h in heads}
    if not dense:
        # One launch with per-head tables: 51 vs 62 ms a layer for five head groups of
        # candidate windows at HunyuanVideo 720p on an H100 (each launch drains the card).
        return run(pattern, q, k, v)
    if len(dense) == q.shape[1]:
        return run(Dense(), q, k, v)
    # Heads that keep everything run dense SDPA; the rest one sparse launch.
    sparse = [h for h in range(q.shape[1]) if h not in dense]
    out = torch.empty_like(q)
    for heads, p in ((sorted(dense), Dense()), (sparse, pattern.pick_heads(sparse))):
        idx = _heads(tuple(heads), str(q.device))
        sub = (x.index_select(1, idx) for x in (q, k, v))
        out.index_copy_(1, idx, run(p, *sub))
    return out
