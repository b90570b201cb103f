"""The public sparse attention op and its nn.Module form."""

from __future__ import annotations

import math

import torch
from torch import nn

from hasten.attn.backends import Problem, get_backend, rank_backends, select_backend
from hasten.attn.layout import VideoLayout
from hasten.attn.patterns import Pattern

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _problem(q, k, v, layout, pattern, text_lengths, scale) -> Problem:
    if not isinstance(layout, VideoLayout):
        raise TypeError(f"layout must be a hasten.attn.VideoLayout, got {type(layout).__name__}")
    if not isinstance(pattern, Pattern):
        raise TypeError(
            f"pattern must be a hasten.attn pattern (SlidingTile, FrameTiles, Dense), "
            f"got {type(pattern).__name__}"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be [batch, heads, seq, head_dim], got shape {tuple(t.shape)}"
            )
    if not (q.shape[:3] == k.shape[:3] == v.shape[:3] and q.shape[3] == k.shape[3]):
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must agree on "
            f"[batch, heads, seq] (and q, k on head_dim)"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one"
        )
    if q.dtype not in _DTYPES:
        raise TypeError(f"dtype {q.dtype} is not supported; use one of {list(_DTYPES)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v live on different devices ({q.device}, {k.device}, {v.device})")
    B, H, S, D = q.shape
    if layout.seq_len != S:
        raise ValueError(
            f"sequence length {S} does not match the layout ({layout}: {layout.seq_len} tokens = "
            f"{layout.video_tokens} video + {layout.text_tokens} text)"
        )
    pattern.validate(layout)
    if pattern.heads is not None and pattern.heads != H:
        raise ValueError(
            f"{type(pattern).__name__} has {pattern.heads} per-head entries but the input has {H} "
            f"heads; give one entry per head or a single one for all heads"
        )
    lengths = layout.check_text_lengths(text_lengths, B)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    return Problem(q, k, v, layout, pattern, lengths, float(scale))


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: VideoLayout,
    pattern: Pattern,
    *,
    text_lengths: torch.Tensor | list[int] | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of ``q, k, v`` (``[B, H, S, D]``, tile-major order) under ``pattern``.

    Args:
        q, k, v: queries, keys, values in the layout's tile-major order (see
            :meth:`VideoLayout.to_tiles`), text tokens where the layout puts them.
        layout: the token geometry.
        pattern: :class:`SlidingTile`, :class:`FrameTiles` or :class:`Dense`.
        text_lengths: valid text tokens per sample (the rest is padding and masked as keys);
            ``None`` when every text token is valid.
        scale: softmax scale, ``1/sqrt(D)`` by default.
        backend: ``"auto"`` (the fastest that can run), or a registered name
            (:func:`hasten.attn.backend_names`); :func:`explain_backends` says why each can or
            cannot run.
    """
    problem = _problem(q, k, v, layout, pattern, text_lengths, scale)
    chosen = select_backend(problem) if backend == "auto" else get_backend(backend)
    if backend != "auto":
        reason = chosen.unavailable(problem)
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} cannot run this call: {reason}")
    return chosen.forward(problem)


def explain_backends(q, k, v, layout, pattern, *, text_lengths=None, scale=None) -> str:
    """One line per backend, in auto's order: whether it can run this call and why not."""
    problem = _problem(q, k, v, layout, pattern, text_lengths, scale)
    lines, picked = [], False
    for b, reason in rank_backends(problem):
        if reason is None and not picked:
            lines.append(f"{b.name}: picked by auto")
            picked = True
        else:
            lines.append(f"{b.name}: {'can run' if reason is None else reason}")
    return "\n".join(lines)


class SparseAttention(nn.Module):
    """:func:`sparse_attention` with a fixed layout and pattern, for use inside models."""

    def __init__(
        self,
        layout: VideoLayout,
        pattern: Pattern,
        *,
        scale: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        pattern.validate(layout)
        if backend != "auto":
            get_backend(backend)  # fail at construction on a bad name
        self.layout, self.pattern, self.scale, self.backend = layout, pattern, scale, backend

    def forward(self, q, k, v, text_lengths=None) -> torch.Tensor:
        return sparse_attention(
            q,
            k,
            v,
            self.layout,
            self.pattern,
            text_lengths=text_lengths,
            scale=self.scale,
            backend=self.backend,
        )

    def replace(self, *, pattern: Pattern | None = None, backend: str | None = None):
        """A module like this one with another pattern or backend (subclasses keep theirs)."""
        return type(self)(
            self.layout,
            self.pattern if pattern is None else pattern,
            scale=self.scale,
            backend=self.backend if backend is None else backend,
        )

    def extra_repr(self) -> str:
        return f"layout=({self.layout}), pattern={self.pattern!r}, backend={self.backend!r}"
