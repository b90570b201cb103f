"""Learning-to-rank scheduling for LLM serving: traces, ranker, policies, simulator, vLLM."""

from __future__ import annotations

#: Heavy names (torch, transformers) load on first use, so ``import hasten.serve`` stays cheap.
_LAZY = {
    "Ranker": "hasten.serve.ranker",
    "RankerConfig": "hasten.serve.ranker",
    "TrainConfig": "hasten.serve.rank_train",
    "train_ranker": "hasten.serve.rank_train",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hasten.serve' has no attribute {name!r}")
