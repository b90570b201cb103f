"""Backends against a float64 oracle; the public op's choice of backend and its errors."""

from __future__ import annotations

import pytest
import torch

from hasten.attn import (
    Dense,
    FrameTiles,
    SlidingTile,
    SparseAttention,
    VideoLayout,
    attention_mask,
    explain_backends,
    sparse_attention,
)
from hasten.attn.backends import Backend, backend_names, register_backend
from hasten.attn.backends.base import _REGISTRY
from tests.attn.numerics import assert_within_torch_error, naive_attention, rel_err

CASES = {
    "divisible": (VideoLayout((4, 8, 8), (2, 4, 4)), SlidingTile((1, 1, 1)), None),
    "ragged": (VideoLayout((5, 7, 9), (2, 3, 4)), SlidingTile((1, 3, 1)), None),
    "per-head": (
        VideoLayout((5, 6, 8), (2, 2, 4)),
        SlidingTile([(1, 1, 1), (3, 3, 1), (1, 1, 2), (3, 3, 3)]),
        None,
    ),
    "text-padded": (
        VideoLayout((5, 7, 9), (2, 3, 4), text_tokens=17),
        SlidingTile((1, 3, 3)),
        [17, 6],
    ),
    "text-first-padded": (
        VideoLayout((4, 6, 10), (2, 4, 4), text_tokens=9, text_first=True),
        SlidingTile([(1, 1, 3), (3, 1, 1), (1, 1, 1), (3, 3, 3)]),
        [0, 9],
    ),
    "frame-tiles": (VideoLayout((6, 6, 6), (3, 4, 4), text_tokens=5), FrameTiles(2), [5, 2]),
    "dense": (VideoLayout((3, 5, 7), (1, 2, 3), text_tokens=4), Dense(), [1, 4]),
}


def _inputs(layout, heads=4, batch=2, dim=32, dtype=torch.float32):
    shape = (batch, heads, layout.seq_len, dim)
    return [torch.randn(shape, dtype=torch.float64).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_backend_matches_float64_oracle(case, dtype, backend, seed):
    layout, pattern, lengths = CASES[case]
    q, k, v = _inputs(layout, dtype=dtype)
    lens = None if lengths is None else torch.tensor(lengths)
    mask = attention_mask(layout, pattern, lens, batch=2)
    ref = naive_attention(q, k, v, mask)
    # PyTorch's own error in this dtype: SDPA with the same mask on the same rounded inputs.
    torch_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = sparse_attention(q, k, v, layout, pattern, text_lengths=lens, backend=backend)
    assert out.dtype == dtype and out.shape == q.shape
    assert_within_torch_error(out, torch_out, ref, dtype, f"{backend}/{case}")


def test_reference_is_exact_in_float64(seed):
    layout, pattern, lengths = CASES["text-padded"]
    q, k, v = _inputs(layout, dtype=torch.float64)
    lens = torch.tensor(lengths)
    out = sparse_attention(q, k, v, layout, pattern, text_lengths=lens, backend="reference")
    assert rel_err(out, naive_attention(q, k, v, attention_mask(layout, pattern, lens, 2))) < 1e-12


def test_scale_is_applied(seed):
    layout, pattern, _ = CASES["ragged"]
    q, k, v = _inputs(layout)
    mask = attention_mask(layout, pattern)
    for backend in ("reference", "flex"):
        out = sparse_attention(q, k, v, layout, pattern, scale=0.3, backend=backend)
        assert rel_err(out, naive_attention(q, k, v, mask, scale=0.3)) < 1e-5


def test_reference_gradients_match_float64(seed):
    """The oracle backend trains: its gradients agree with autograd through float64 math."""
    layout, pattern, lengths = CASES["text-first-padded"]
    lens = torch.tensor(lengths)
    q, k, v = (t.requires_grad_() for t in _inputs(layout, dtype=torch.float64))
    out = sparse_attention(q, k, v, layout, pattern, text_lengths=lens, backend="reference")
    grad = torch.randn_like(out)
    out.backward(grad)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    mask = attention_mask(layout, pattern, lens, 2)
    scores = (q2 @ k2.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~mask, float("-inf"))
    (torch.softmax(scores, -1) @ v2).backward(grad)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert rel_err(a.grad, b.grad.to(torch.float64)) < 1e-10


def test_nothing_is_written_to_padded_or_unkept_positions_as_garbage(seed):
    """Every output row is finite, padded text queries included (they attend to valid keys)."""
    layout, pattern, _ = CASES["text-padded"]
    q, k, v = _inputs(layout)
    for backend in ("reference", "flex"):
        out = sparse_attention(q, k, v, layout, pattern, text_lengths=[0, 3], backend=backend)
        assert torch.isfinite(out).all()


def test_auto_picks_reference_on_cpu_and_explains():
    layout, pattern, _ = CASES["divisible"]
    q, k, v = _inputs(layout)
    report = explain_backends(q, k, v, layout, pattern)
    assert report.splitlines()[0] == "reference: picked by auto"
    assert "flex: can run" in report
    q.requires_grad_()
    assert "flex: FlexAttention has no backward on CPU" in explain_backends(
        q, k, v, layout, pattern
    )


def test_auto_skips_a_backend_that_cannot_run_and_uses_the_registry_order():
    class Broken(Backend):
        name = "broken-test"
        rank = {"cpu": -1}  # noqa: RUF012 (a test double)

        def unavailable(self, problem):
            return "never runs (test double)"

    class Echo(Backend):
        name = "echo-test"
        rank = {"cpu": -2}  # noqa: RUF012

        def forward(self, p):
            return p.v * 0 + 7

    layout, pattern, _ = CASES["divisible"]
    q, k, v = _inputs(layout)
    try:
        register_backend(Broken())
        assert "broken-test: never runs" in explain_backends(q, k, v, layout, pattern)
        register_backend(Echo())
        assert "echo-test" in backend_names()
        assert (sparse_attention(q, k, v, layout, pattern) == 7).all()
    finally:
        _REGISTRY.pop("broken-test", None)
        _REGISTRY.pop("echo-test", None)


def test_module_form(seed):
    layout, pattern, _ = CASES["per-head"]
    q, k, v = _inputs(layout)
    module = SparseAttention(layout, pattern, backend="flex")
    assert "SlidingTile" in repr(module)
    expected = sparse_attention(q, k, v, layout, pattern, backend="reference")
    assert rel_err(module(q, k, v), expected.double()) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_flex_matches_float64_oracle(case, seed):
    """Compiled FlexAttention skips blocks by the table: the GPU check of the block table."""
    layout, pattern, lengths = CASES[case]
    q, k, v = (t.cuda() for t in _inputs(layout, dim=64, dtype=torch.bfloat16))
    lens = None if lengths is None else torch.tensor(lengths)
    mask = attention_mask(layout, pattern, lens, batch=2).cuda()
    ref = naive_attention(q, k, v, mask)
    torch_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = sparse_attention(q, k, v, layout, pattern, text_lengths=lens, backend="flex")
    assert_within_torch_error(out, torch_out, ref, torch.bfloat16, f"cuda/flex/{case}")


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "picked"), [(torch.bfloat16, "triton"), (torch.float32, "flex")])
def test_auto_prefers_the_kernels_over_the_oracle_on_cuda(dtype, picked):
    # Triton first where it runs (half precision); fp32 falls to flex, never to the oracle.
    pytest.importorskip("triton")
    layout, pattern, _ = CASES["divisible"]
    q, k, v = (t.cuda() for t in _inputs(layout, dtype=dtype))
    lines = explain_backends(q, k, v, layout, pattern).splitlines()
    assert [line for line in lines if line.endswith("picked by auto")] == [
        f"{picked}: picked by auto"
    ]
    if picked == "flex":
        assert lines[0].startswith("triton: dtype torch.float32 is not supported on cuda")


def test_bad_inputs_explain_themselves():
    layout, pattern, _ = CASES["text-padded"]
    q, k, v = _inputs(layout)
    S = layout.seq_len
    with pytest.raises(ValueError, match=rf"sequence length {S - 1} does not match"):
        sparse_attention(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], layout, pattern)
    with pytest.raises(ValueError, match="must agree on"):
        sparse_attention(q, k[:1], v, layout, pattern)
    with pytest.raises(TypeError, match="dtypes differ"):
        sparse_attention(q, k.half(), v, layout, pattern)
    with pytest.raises(TypeError, match="not supported"):
        sparse_attention(q.int(), k.int(), v.int(), layout, pattern)
    with pytest.raises(ValueError, match="different devices"):
        sparse_attention(q, k.to("meta"), v, layout, pattern)
    with pytest.raises(ValueError, match=r"\[batch, heads, seq, head_dim\]"):
        sparse_attention(q[0], k[0], v[0], layout, pattern)
    with pytest.raises(ValueError, match="has 3 per-head entries but the input has 4 heads"):
        sparse_attention(q, k, v, layout, SlidingTile([(1, 1, 1)] * 3))
    with pytest.raises(ValueError, match=r"text_lengths \[18\] are outside 0\.\.17"):
        sparse_attention(q, k, v, layout, pattern, text_lengths=[18, 2])
    with pytest.raises(ValueError, match="one valid text length per sample"):
        sparse_attention(q, k, v, layout, pattern, text_lengths=[3])
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; choose one of \['auto'"):
        sparse_attention(q, k, v, layout, pattern, backend="nope")
    with pytest.raises(TypeError, match="pattern must be"):
        sparse_attention(q, k, v, layout, "sta")
    with pytest.raises(RuntimeError, match=r"backend 'flex' cannot run this call: .*no backward"):
        sparse_attention(q.requires_grad_(), k, v, layout, pattern, backend="flex")
