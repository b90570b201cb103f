"""The Triton backend against the float64 oracle, forward and backward (interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

from hasten.attn import (
    Dense,
    FrameTiles,
    SlidingTile,
    VideoLayout,
    attention_mask,
    explain_backends,
    sparse_attention,
)
from tests.attn.numerics import assert_within_torch_error, naive_attention

triton = pytest.importorskip("triton")

from triton.runtime.errors import OutOfResources  # noqa: E402

from hasten.attn.kernels.ops import (  # noqa: E402  (needs triton)
    KernelConfig,
    PassConfig,
    kernel_tables,
    sparse_attention_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter's bf16 dot is wrong (see environment notes): CPU tests take fp16 and fp32.
DTYPES = [torch.bfloat16, torch.float16] if DEVICE == "cuda" else [torch.float16, torch.float32]
# Small chunks keep the interpreter quick; the same code runs with 128 x 64 on the GPU.
SMALL = KernelConfig(fwd=PassConfig(16, 16), dkdv=PassConfig(16, 32), dq=PassConfig(32, 16))

CASES = {
    "ragged": (VideoLayout((3, 5, 6), (2, 2, 4)), SlidingTile((1, 3, 1)), None),
    "per-head+text": (
        VideoLayout((3, 4, 6), (2, 2, 4), text_tokens=5),
        SlidingTile([(1, 1, 1), (3, 1, 1)]),
        [5, 2],
    ),
    "text-first": (
        VideoLayout((4, 4, 4), (2, 2, 2), text_tokens=6, text_first=True),
        SlidingTile((1, 3, 3)),
        [0, 6],
    ),
    "frame-tiles": (VideoLayout((4, 4, 4), (3, 2, 2), text_tokens=3), FrameTiles(1), [3, 1]),
    "dense": (VideoLayout((2, 4, 4), (1, 2, 2), text_tokens=2), Dense(), None),
}


def _inputs(layout, dtype, dim=16, heads=2, batch=2, grad=False):
    shape = (batch, heads, layout.seq_len, dim)
    return [
        torch.randn(shape, dtype=torch.float64).to(DEVICE, dtype).requires_grad_(grad)
        for _ in range(3)
    ]


def _mask(layout, pattern, lengths):
    lens = None if lengths is None else torch.tensor(lengths)
    return lens, attention_mask(layout, pattern, lens, batch=2).to(DEVICE)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_float64_oracle(case, dtype, seed):
    layout, pattern, lengths = CASES[case]
    q, k, v = _inputs(layout, dtype)
    lens, mask = _mask(layout, pattern, lengths)
    ref = naive_attention(q, k, v, mask)
    torch_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = sparse_attention_triton(q, k, v, layout, pattern, lens, config=SMALL)
    assert_within_torch_error(out, torch_out, ref, dtype, f"triton fwd/{case}")


@pytest.mark.parametrize("case", ["per-head+text", "frame-tiles", "text-first"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_autograd_through_the_oracle(case, dtype, seed):
    layout, pattern, lengths = CASES[case]
    q, k, v = _inputs(layout, dtype, grad=True)
    lens, mask = _mask(layout, pattern, lengths)
    grad = torch.randn(q.shape, dtype=torch.float64)

    def grads(q, k, v, run):
        out = run(q, k, v)
        return torch.autograd.grad(out, (q, k, v), grad.to(out.device, out.dtype))

    ref = grads(*(t.detach().double().cpu().requires_grad_() for t in (q, k, v)),
                lambda q, k, v: naive_attention_grad(q, k, v, mask.cpu()))  # fmt: skip
    sdpa = grads(q, k, v, lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask))  # fmt: skip
    ours = grads(q, k, v, lambda q, k, v: sparse_attention_triton(
        q, k, v, layout, pattern, lens, config=SMALL))  # fmt: skip
    for name, a, b, r in zip("qkv", ours, sdpa, ref, strict=True):
        assert_within_torch_error(a, b, r.detach(), dtype, f"triton d{name}/{case}")


def naive_attention_grad(q, k, v, mask):
    """Differentiable float64 attention (``naive_attention`` detaches)."""
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v


def test_tile_aligned_chunks_need_no_element_masks_for_sta():
    """Ragged canvas, STA: only full chunk pairs, so the masked path is never compiled in."""
    layout = VideoLayout((21, 45, 80), (6, 8, 8))
    t = kernel_tables(layout, SlidingTile((3, 3, 3)), None, 128, 64, "cpu")
    assert not t.rows.cell_mask and not t.cols.cell_mask
    # Short edge chunks run in the masked loop, with a bounds mask only.
    assert t.rows.has_masked and t.cols.has_masked
    divisible = VideoLayout((30, 48, 80), (6, 8, 8))
    t = kernel_tables(divisible, SlidingTile((3, 3, 3)), None, 128, 64, "cpu")
    assert not t.rows.has_masked and not t.cols.has_masked
    t = kernel_tables(layout, FrameTiles(2), None, 128, 64, "cpu")
    assert t.rows.cell_mask


@pytest.mark.parametrize("lengths", [None, (5, 2)])
def test_per_head_tables_stack_the_rule_tables_exactly(lengths):
    # Per-head tables are stacked from each rule's own tables; they must say exactly what
    # tables built from the per-head pattern as a whole say.
    from hasten.attn.kernels.ops import _cached_tables

    layout = VideoLayout((3, 5, 6), (1, 2, 4), text_tokens=5)
    pattern = SlidingTile([(1, 1, 1), (3, 3, 1), (1, 1, 1), (3, 1, 3)])
    stacked = kernel_tables(layout, pattern, lengths, 16, 32, "cpu")
    whole = _cached_tables(layout, pattern, lengths, 16, 32, "cpu")
    assert torch.equal(stacked.keep, whole.keep)
    for a, b in ((stacked.rows, whole.rows), (stacked.cols, whole.cols)):
        assert (a.has_masked, a.cell_mask, a.pad_mask) == (b.has_masked, b.cell_mask, b.pad_mask)
        for count, idx in ((0, 1), (2, 3)):
            n = a.tensors[count]
            assert torch.equal(n, b.tensors[count])
            used = torch.arange(a.tensors[idx].shape[-1]) < n[..., None]
            w = b.tensors[idx].shape[-1]
            ours, theirs = a.tensors[idx][..., :w], b.tensors[idx]
            assert torch.equal(ours[used[..., :w]], theirs[used[..., :w]])
            assert not used[..., w:].any()


def test_public_op_and_backend_choice(seed):
    layout, pattern, lengths = CASES["per-head+text"]
    q, k, v = _inputs(layout, DTYPES[0])
    report = explain_backends(q, k, v, layout, pattern)
    if DEVICE == "cuda":
        assert report.splitlines()[0] == "triton: picked by auto"
    else:
        assert "triton: not picked automatically on cpu" in report
    out = sparse_attention(q, k, v, layout, pattern, text_lengths=lengths, backend="triton")
    ref = sparse_attention(q, k, v, layout, pattern, text_lengths=lengths, backend="reference")
    assert (out.double() - ref.double()).abs().max() < 2e-2


def test_unsupported_head_dim_is_explained():
    layout, pattern, _ = CASES["ragged"]
    q, k, v = _inputs(layout, DTYPES[0], dim=24)
    assert "head dim 24 is not supported" in explain_backends(q, k, v, layout, pattern)
    with pytest.raises(RuntimeError, match=r"head dim 24 is not supported; use one of \(16"):
        sparse_attention(q, k, v, layout, pattern, backend="triton")


def test_bad_kernel_config_is_explained():
    with pytest.raises(ValueError, match="block_m must be a power of two >= 16, got 48"):
        PassConfig(block_m=48)


class _SharedMemoryCap:
    """Stands in for a compiled kernel on a card whose shared memory fits at most ``cap``
    pipeline stages (a real overflow needs a GPU); within the cap it runs the real kernel."""

    def __init__(self, kernel, cap: int):
        self.kernel, self.cap, self.stages = kernel, cap, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.stages.append(kw["num_stages"])
            if kw["num_stages"] > self.cap:
                raise OutOfResources(233472, 232448, "shared memory")
            return self.kernel[grid](*args, **kw)

        return launch


def test_shared_memory_overflow_lowers_stages_once(monkeypatch, seed):
    from hasten.attn.kernels import block_sparse, ops

    layout, pattern, lengths = CASES["frame-tiles"]
    q, k, v = _inputs(layout, DTYPES[0])
    lens, mask = _mask(layout, pattern, lengths)
    capped = _SharedMemoryCap(block_sparse._attn_fwd, cap=1)
    monkeypatch.setattr(block_sparse, "_attn_fwd", capped)
    monkeypatch.setattr(ops, "LOWERED_STAGES", {})
    config = KernelConfig(fwd=PassConfig(16, 16, 4, 3))
    with pytest.warns(RuntimeWarning, match="fwd kernel: .*retrying with num_stages=1"):
        out = sparse_attention_triton(q, k, v, layout, pattern, lens, config=config)
    assert capped.stages == [3, 2, 1]
    ref = naive_attention(q, k, v, mask)
    torch_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_within_torch_error(out, torch_out, ref, DTYPES[0], "after lowering stages")
    # The lowered count is remembered: the next call launches once, at one stage.
    sparse_attention_triton(q, k, v, layout, pattern, lens, config=config)
    assert capped.stages == [3, 2, 1, 1]


def test_shared_memory_overflow_at_one_stage_is_raised(monkeypatch, seed):
    from hasten.attn.kernels import block_sparse, ops

    layout, pattern, lengths = CASES["frame-tiles"]
    q, k, v = _inputs(layout, DTYPES[0])
    monkeypatch.setattr(block_sparse, "_attn_fwd", _SharedMemoryCap(block_sparse._attn_fwd, 0))
    monkeypatch.setattr(ops, "LOWERED_STAGES", {})
    with pytest.warns(RuntimeWarning), pytest.raises(OutOfResources):
        sparse_attention_triton(
            q, k, v, layout, pattern, torch.tensor(lengths), config=KernelConfig(PassConfig(16, 16))
        )


def test_torch_compile_traces_the_custom_op(seed):
    """The op is a torch.library custom op with a fake impl: compile sees one opaque node."""
    layout, pattern, lengths = CASES["per-head+text"]
    q, k, v = _inputs(layout, DTYPES[0], grad=True)

    def f(q, k, v):
        return sparse_attention(q, k, v, layout, pattern, text_lengths=lengths, backend="triton")

    compiled = torch.compile(f, backend="aot_eager")
    out = compiled(q, k, v)
    eager = f(q, k, v)
    assert torch.equal(out, eager)
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


CUDA_CONFIGS = {
    "pointers": KernelConfig(),
    "tma": KernelConfig(tma=True),
    "tma-128x128": KernelConfig(fwd=PassConfig(128, 128, 8, 3), tma=True),
    "tma-ws": KernelConfig(fwd=PassConfig(128, 128, 8, 3), tma=True, warp_specialize=True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CUDA_CONFIGS))
@pytest.mark.parametrize(
    ("layout", "pattern", "lengths"),
    [
        (VideoLayout((12, 16, 24), (6, 8, 8), text_tokens=40), SlidingTile((1, 3, 3)), [40, 17]),
        (VideoLayout((9, 13, 20), (6, 8, 8)), SlidingTile([(1, 1, 3), (3, 3, 3)] * 2), None),
        (VideoLayout((8, 16, 16), (2, 8, 8), text_tokens=8), FrameTiles(2), [8, 3]),
    ],
)
def test_cuda_configs_forward_and_backward(layout, pattern, lengths, name, seed):
    """Full-size chunks, TMA loads and the warp-specialized loop, as used at scale."""
    config = CUDA_CONFIGS[name]
    q, k, v = _inputs(layout, torch.bfloat16, dim=128, heads=4, grad=True)
    lens, mask = _mask(layout, pattern, lengths)
    grad = torch.randn_like(q)
    out = sparse_attention_triton(q, k, v, layout, pattern, lens, config=config)
    ours = (out, *torch.autograd.grad(out, (q, k, v), grad))
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    theirs = (sdpa, *torch.autograd.grad(sdpa, (q, k, v), grad))
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = naive_attention_grad(qd, kd, vd, mask)
    refs = (ref, *torch.autograd.grad(ref, (qd, kd, vd), grad.double()))
    for what, a, b, r in zip(["out", "dq", "dk", "dv"], ours, theirs, refs, strict=True):
        assert_within_torch_error(a, b, r.detach().cpu(), torch.bfloat16, f"{what}/{name}")
