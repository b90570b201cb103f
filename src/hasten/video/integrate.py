"""enable_sparse_attention / disable_sparse_attention: swap a transformer's attention processors."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from hasten.video.models import adapter_for
from hasten.video.runtime import SparseRuntime
from hasten.video.strategy import Strategy, load_strategy

_ATTR = "_hasten_sparse"


def _unwrap(transformer) -> nn.Module:
    # torch.compile(module) wraps the module; processors and hooks belong on the original.
    return getattr(transformer, "_orig_mod", transformer)


def enable_sparse_attention(
    transformer: nn.Module,
    strategy: Strategy | str | Path | dict,
    *,
    backend: str = "auto",
) -> SparseRuntime:
    """Run ``transformer``'s self-attention under ``strategy``; returns the shared runtime.

    ``transformer`` is a diffusers ``HunyuanVideoTransformer3DModel``,
    ``WanTransformer3DModel`` or ``CogVideoXTransformer3DModel``. ``strategy`` is a
    :class:`~hasten.video.Strategy`, a preset name (:data:`hasten.video.PRESETS`), a strategy
    JSON file or its dict. The denoising step is read from each forward call's timestep, so
    the pipeline's own ``__call__`` needs no changes. Enable before ``torch.compile``.
    ``backend`` picks the sparse kernel (``hasten.attn`` backends; ``auto``: Triton on CUDA).
    """
    model = _unwrap(transformer)
    if not isinstance(model, nn.Module):
        raise TypeError(f"transformer must be a torch.nn.Module, got {type(model).__name__}")
    adapter = adapter_for(model)
    strategy = load_strategy(strategy)
    if getattr(model, _ATTR, None) is not None:
        disable_sparse_attention(model)
    modules = adapter.attention_modules(model)
    heads = {m.heads for m in modules}
    if len(heads) != 1:
        raise ValueError(f"{type(model).__name__} mixes head counts {sorted(heads)}")
    runtime = SparseRuntime(
        strategy,
        model=type(model).__name__,
        layers=len(modules),
        heads=heads.pop(),
        text_first=adapter.text_first,
        backend=backend,
    )
    try:
        strategy.check_model(runtime.layers, runtime.heads, model=type(model).__name__)
    except ValueError:
        runtime.close()
        raise
    originals = [m.processor for m in modules]
    for layer, module in enumerate(modules):
        module.set_processor(adapter.processor(runtime, layer))
    hook = model.register_forward_pre_hook(
        functools.partial(_before_forward, adapter, runtime), with_kwargs=True
    )
    setattr(model, _ATTR, (runtime, originals, hook))
    return runtime


@torch.compiler.disable  # reads the timestep's value: always eager, outside any graph
def _before_forward(adapter, runtime: SparseRuntime, module, args, kwargs):
    runtime.begin(adapter.forward_info(module, adapter.bind(module, args, kwargs)))


def disable_sparse_attention(transformer: nn.Module) -> None:
    """Put back the processors ``enable_sparse_attention`` replaced (no-op if none were)."""
    model = _unwrap(transformer)
    state = getattr(model, _ATTR, None)
    if state is None:
        return
    runtime, originals, hook = state
    for module, proc in zip(adapter_for(model).attention_modules(model), originals, strict=True):
        module.set_processor(proc)
    hook.remove()
    runtime.close()
    setattr(model, _ATTR, None)


def sparse_runtime(transformer: nn.Module) -> SparseRuntime | None:
    """The runtime of a transformer with sparse attention enabled, else ``None``."""
    state = getattr(_unwrap(transformer), _ATTR, None)
    return None if state is None else state[0]
