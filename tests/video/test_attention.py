"""The layer-level op: dense fast path with padding, head groups, permutation, against float64."""

from __future__ import annotations

import pytest
import torch

from hasten.attn import Dense, FrameTiles, SlidingTile, VideoLayout
from hasten.video.attention import dense_attention, head_groups, is_full, video_attention
from tests.attn.numerics import assert_within_torch_error
from tests.video.oracle import oracle, torch_same_dtype

CASES = {
    # Text after the video with padding (HunyuanVideo), a ragged canvas, per-head windows.
    "text-last-padded": (
        VideoLayout((5, 6, 7), (2, 4, 3), text_tokens=9),
        SlidingTile([(1, 1, 1), (3, 1, 3), (1, 1, 1), (9, 9, 9)]),
        [9, 4],
    ),
    # Text first (CogVideoX), padded as keys.
    "text-first-padded": (
        VideoLayout((4, 6, 6), (2, 2, 4), text_tokens=5, text_first=True),
        SlidingTile([(1, 3, 1), (1, 1, 2), (1, 3, 1), (1, 1, 2)]),
        [2, 5],
    ),
    # Video only (Wan), one window for all heads.
    "video-only": (VideoLayout((5, 7, 9), (2, 3, 4)), SlidingTile((1, 3, 1)), None),
    "frame-tiles": (VideoLayout((6, 4, 4), (2, 2, 2), text_tokens=3), FrameTiles(2), [3, 1]),
    "dense-padded": (VideoLayout((3, 4, 5), (1, 2, 2), text_tokens=6), Dense(), [6, 2]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_video_attention_matches_float64_oracle(case, seed):
    layout, pattern, lengths = CASES[case]
    lens = None if lengths is None else torch.tensor(lengths)
    q, k, v = (torch.randn(2, layout.seq_len, 4, 16) for _ in range(3))
    out = video_attention(q, k, v, layout, pattern, lens, backend="reference")
    assert out.shape == q.shape
    ref = oracle(q, k, v, layout, pattern, lens)
    assert_within_torch_error(
        out, torch_same_dtype(q, k, v, layout, pattern, lens), ref, torch.float32
    )


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["text-last-padded", "text-first-padded", "video-only"])
def test_video_attention_on_cuda_matches_float64_oracle(case, seed):
    # The Triton kernel in the model's layout: permutation, head groups, TMA loads of k, v.
    layout, pattern, lengths = CASES[case]
    lens = None if lengths is None else torch.tensor(lengths)
    q, k, v = (
        torch.randn(2, layout.seq_len, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3)
    )
    out = video_attention(q, k, v, layout, pattern, lens, backend="triton")
    ref = oracle(*(x.cpu().double() for x in (q, k, v)), layout, pattern, lens)
    same = torch_same_dtype(q, k, v, layout, pattern, lens)
    assert_within_torch_error(out.cpu().double(), same.cpu().double(), ref, torch.bfloat16)


def test_kernels_get_contiguous_heads_first_tensors(monkeypatch, seed):
    # The Triton kernel loads k and v through TMA only from contiguous [B, H, S, D]: the
    # permutation must produce that layout, not a transposed view of [B, S, H, D].
    import hasten.video.attention as va

    seen = []

    def spy(q, k, v, *args, **kw):
        seen.append(all(x.is_contiguous() for x in (q, k, v)))
        return real(q, k, v, *args, **kw)

    real = va.sparse_attention
    monkeypatch.setattr(va, "sparse_attention", spy)
    layout, pattern, lengths = CASES["text-last-padded"]
    q, k, v = (torch.randn(2, layout.seq_len, 4, 16) for _ in range(3))
    video_attention(q, k, v, layout, pattern, torch.tensor(lengths), backend="reference")
    assert seen and all(seen), seen


def test_dense_drops_padding_by_cutting_keys(seed):
    # Different valid lengths in one batch: each sample gets its own cut, padded text queries
    # included (they see every valid key, as under the model's key mask).
    layout = VideoLayout((3, 4, 4), (1, 2, 2), text_tokens=7)
    lens = torch.tensor([7, 3, 3])
    q, k, v = (torch.randn(3, layout.seq_len, 2, 8, dtype=torch.float64) for _ in range(3))
    out = dense_attention(q, k, v, layout, lens)
    assert torch.allclose(out, oracle(q, k, v, layout, Dense(), lens), atol=1e-12, rtol=0)


def test_head_groups_exact():
    p = SlidingTile([(1, 1, 1), (3, 3, 3), (1, 1, 1), (5, 5, 5)])
    assert head_groups(p, 4) == [
        (SlidingTile((1, 1, 1)), [0, 2]),
        (SlidingTile((3, 3, 3)), [1]),
        (SlidingTile((5, 5, 5)), [3]),
    ]
    assert head_groups(SlidingTile([(3, 3, 3)] * 3), 3) == [(SlidingTile((3, 3, 3)), None)]
    assert head_groups(FrameTiles([1, 2, 1]), 3) == [(FrameTiles(1), [0, 2]), (FrameTiles(2), [1])]
    with pytest.raises(ValueError, match="3 per-head entries but the layer has 4 heads"):
        head_groups(SlidingTile([(1, 1, 1)] * 3), 4)


def test_is_full_exact():
    layout = VideoLayout((6, 8, 8), (2, 4, 4))  # grid 3x2x2
    assert is_full(Dense(), layout)
    assert is_full(SlidingTile((3, 2, 2)), layout) and is_full(SlidingTile((9, 9, 9)), layout)
    assert not is_full(SlidingTile((1, 2, 2)), layout)
    # k:(T-k) keeps everything once k >= T-1 latent frames, and not before.
    assert is_full(FrameTiles(5), layout) and not is_full(FrameTiles(4), layout)
    for k in (4, 5):
        assert is_full(FrameTiles(k), layout) == (FrameTiles(k).density(layout) == 1.0)
