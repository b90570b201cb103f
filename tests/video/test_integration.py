"""enable_sparse_attention in tiny random HunyuanVideo, Wan and CogVideoX transformers (CPU)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hasten.attn import SlidingTile
from hasten.video import (
    DenseStrategy,
    PerHeadStrategy,
    SlidingTileStrategy,
    disable_sparse_attention,
    enable_sparse_attention,
    sparse_runtime,
)
from hasten.video.tiny import MODELS, pipeline_inputs, tiny_pipeline, tiny_transformer
from hasten.video.tiny import transformer_inputs as inputs_for
from tests.attn.numerics import assert_within_torch_error, rel_err
from tests.video.oracle import oracle, torch_same_dtype

CANVAS = (3, 4, 6)  # latent after patchify; tile 1x2x2 gives a 3x2x3 grid
TILE = (1, 2, 2)
TEXT_LENGTH = {"hunyuanvideo": [5], "wan": None, "cogvideox": None}  # only Hunyuan pads


def _inputs(model, tr, dtype=torch.float32, timestep=500.0, seed=0):
    lengths = TEXT_LENGTH[model]
    return inputs_for(
        model, tr, CANVAS, text_lengths=lengths, dtype=dtype, timestep=timestep, seed=seed
    )


def _per_head(dense_steps=1, steps=3, layers=2):
    # Every (step, layer, head) differs from its neighbours, so a window that reached the
    # wrong head, layer or step changes that head's output.
    choices = [(1, 1, 1), (3, 1, 1), (1, 2, 1), (1, 1, 3), (3, 2, 1), (1, 2, 3)]
    table, i = [], 0
    for _ in range(dense_steps, steps):
        rows = []
        for _ in range(layers):
            rows.append((choices[i % 6], choices[(i + 1) % 6]))
            i += 1
        table.append(tuple(rows))
    return PerHeadStrategy(tile=TILE, dense_steps=dense_steps, windows=tuple(table))


@pytest.mark.parametrize("model", MODELS)
def test_full_window_reproduces_dense_output(model, seed):
    tr = tiny_transformer(model, seed=seed).eval()
    with torch.no_grad():
        ref = tr.double()(**_inputs(model, tr, torch.float64)).sample
        tr.float()
        dense = tr(**_inputs(model, tr)).sample
        enable_sparse_attention(tr, SlidingTileStrategy(window=(9, 9, 9), tile=TILE))
        full = tr(**_inputs(model, tr)).sample
        enable_sparse_attention(tr, SlidingTileStrategy(window=(1, 1, 1), tile=TILE))
        sparse = tr(**_inputs(model, tr)).sample
    assert_within_torch_error(full, dense, ref, torch.float32, name=f"{model} full window")
    # The check can fail: a sparse window is far outside that bound.
    assert rel_err(sparse, ref) > 100 * (2 * rel_err(dense, ref) + 1e-6)


class _Checker:
    """A runtime recorder: every layer's output against the float64 oracle of its pattern."""

    def __init__(self, strategy):
        self.strategy, self.seen = strategy, []

    def __call__(self, step, layer, q, k, v, out, layout, lengths):
        pattern = self.strategy.pattern(step, layer)
        ref = oracle(q, k, v, layout, pattern, lengths)
        torch_out = torch_same_dtype(q, k, v, layout, pattern, lengths)
        assert_within_torch_error(out, torch_out, ref, q.dtype, name=f"step {step} layer {layer}")
        if pattern.heads is not None:
            # Give head 0 the window of head 1 and head 1 that of head 0: must not match.
            swapped = SlidingTile([pattern.windows[1], pattern.windows[0]])
            wrong = oracle(q, k, v, layout, swapped, lengths)
            assert rel_err(out, wrong) > 1e3 * max(rel_err(out, ref), 1e-9)
        self.seen.append((step, layer))


@pytest.mark.parametrize("model", MODELS)
def test_per_head_windows_reach_their_heads_inside_the_pipeline(model, seed):
    tr = tiny_transformer(model, seed=seed)
    strategy = _per_head()
    runtime = enable_sparse_attention(tr, strategy, backend="reference")
    runtime.recorder = check = _Checker(strategy)
    pipe = tiny_pipeline(model, tr)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        pipe(**pipeline_inputs(model, tr, CANVAS, steps=3, seed=seed, text_length=5))
    # Wan and CogVideoX run classifier-free guidance: Wan as a second call per step.
    calls = 2 if model == "wan" else 1
    want = [(s, layer) for s in range(3) for _ in range(calls) for layer in range(2)]
    assert check.seen == want


@pytest.mark.parametrize("model", MODELS)
def test_pipeline_steps_reach_the_attention(model):
    tr = tiny_transformer(model)
    runtime = enable_sparse_attention(
        tr, SlidingTileStrategy(window=(1, 1, 1), tile=TILE, dense_steps=2)
    )
    runtime.trace = []
    pipe = tiny_pipeline(model, tr)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for _ in range(2):  # a second generation starts again at step 0
            pipe(**pipeline_inputs(model, tr, CANVAS, steps=4, text_length=5))
    steps = [s for s, _, _ in runtime.trace]
    calls = (2 if model == "wan" else 1) * 2  # per step: CFG calls x layers
    assert steps == [s for s in range(4) for _ in range(calls)] * 2
    kinds = {(s, type(p).__name__) for s, _, p in runtime.trace}
    assert kinds == {(0, "Dense"), (1, "Dense"), (2, "SlidingTile"), (3, "SlidingTile")}


def test_pin_and_reset_steps():
    tr = tiny_transformer("wan")
    runtime = enable_sparse_attention(tr, DenseStrategy(tile=TILE))
    with torch.no_grad():
        for t in (900.0, 900.0, 700.0, 300.0):
            tr(**_inputs("wan", tr, timestep=t))
        assert runtime.step == 2
        tr(**_inputs("wan", tr, timestep=950.0))  # a larger timestep: a new run
        assert runtime.step == 0
        runtime.pin_step(7)
        tr(**_inputs("wan", tr, timestep=10.0))
        assert runtime.step == 7
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        runtime.pin_step(-1)


@pytest.mark.parametrize("model", MODELS)
def test_disable_restores_the_model(model):
    tr = tiny_transformer(model).eval()
    before = dict(tr.attn_processors)
    with torch.no_grad():
        ref = tr(**_inputs(model, tr)).sample
        runtime = enable_sparse_attention(tr, SlidingTileStrategy(window=(1, 1, 1), tile=TILE))
        assert sparse_runtime(tr) is runtime
        assert not torch.equal(tr(**_inputs(model, tr)).sample, ref)
        disable_sparse_attention(tr)
        assert torch.equal(tr(**_inputs(model, tr)).sample, ref)
    assert tr.attn_processors == before
    assert sparse_runtime(tr) is None and not tr._forward_pre_hooks


def _counting_backend(counter):
    def backend(gm, example_inputs):
        counter.append(gm)
        return gm.forward

    return backend


def test_compiled_blocks_follow_the_steps_without_recompiling(seed):
    tr = tiny_transformer("hunyuanvideo", seed=seed).eval()
    strategy = _per_head()
    runtime = enable_sparse_attention(tr, strategy)
    x = _inputs("hunyuanvideo", tr)
    with torch.no_grad():
        eager = []
        for step in range(3):
            runtime.pin_step(step)
            eager.append(tr(**x).sample)
        torch.compiler.reset()
        graphs = []
        for block in [*tr.transformer_blocks, *tr.single_transformer_blocks]:
            block.compile(fullgraph=True, backend=_counting_backend(graphs))
        for step in range(3):
            runtime.pin_step(step)
            assert torch.allclose(tr(**x).sample, eager[step], atol=1e-6, rtol=0)
    assert len(graphs) == 2  # one per block class, for all steps and patterns
    assert not torch.allclose(eager[1], eager[2])


@pytest.mark.parametrize("model", ["wan", "cogvideox"])
def test_whole_transformer_under_torch_compile(model):
    tr = tiny_transformer(model).eval()
    enable_sparse_attention(tr, SlidingTileStrategy(window=(1, 1, 1), tile=TILE, dense_steps=1))
    torch.compiler.reset()
    graphs = []
    compiled = torch.compile(tr, backend=_counting_backend(graphs))
    with torch.no_grad():
        outs = [compiled(**_inputs(model, tr, timestep=t)).sample for t in (900.0, 500.0)]
        disable_sparse_attention(tr)
        dense = tr(**_inputs(model, tr, timestep=900.0)).sample
        enable_sparse_attention(tr, SlidingTileStrategy(window=(1, 1, 1), tile=TILE))
        sparse = tr(**_inputs(model, tr, timestep=500.0)).sample
    assert graphs
    assert torch.allclose(outs[0], dense, atol=1e-6, rtol=0)
    assert torch.allclose(outs[1], sparse, atol=1e-6, rtol=0)


def test_mismatches_are_rejected():
    tr = tiny_transformer("wan")
    with pytest.raises(TypeError, match="Linear is not a supported video transformer"):
        enable_sparse_attention(torch.nn.Linear(2, 2), "dense")
    with pytest.raises(ValueError, match="2 layers x 2 heads but WanTransformer3DModel has 3"):
        enable_sparse_attention(tiny_transformer("wan", layers=3), _per_head())
    enable_sparse_attention(tr, SlidingTileStrategy(window=(1, 1, 1), tile=TILE, canvas=(5, 5, 5)))
    with pytest.raises(ValueError, match="made for canvas 5x5x5 but the model runs at 3x4x6"):
        tr(**_inputs("wan", tr))
    enable_sparse_attention(tr, SlidingTileStrategy(window=(2, 1, 1), tile=TILE))
    with pytest.raises(ValueError, match="t-extent 2 is even"):
        tr(**_inputs("wan", tr))
    runtime = enable_sparse_attention(tr, _per_head())
    runtime.pin_step(3)
    with pytest.raises(ValueError, match="step 3 is past this strategy's 3 steps"):
        tr(**_inputs("wan", tr))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_kernels_in_the_model(seed):
    # On CPU the Triton kernels run in its interpreter (tests/conftest.py turns it on).
    from hasten.attn.kernels.ops import interpreting

    if not (torch.cuda.is_available() or interpreting()):
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    tr = tiny_transformer("hunyuanvideo", seed=seed, layers=2)
    strategy = _per_head(dense_steps=0, steps=1)
    runtime = enable_sparse_attention(tr, strategy, backend="triton")
    runtime.recorder = check = _Checker(strategy)
    with torch.no_grad():
        tr(**_inputs("hunyuanvideo", tr))
    assert check.seen == [(0, 0), (0, 1)]
