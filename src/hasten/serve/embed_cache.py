"""Frozen-encoder embeddings kept on disk, so sweeps and cross-fits embed each prompt once."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from hasten.serve.models import cache_dir
from hasten.serve.ranker import Ranker


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_file(ranker: Ranker) -> Path:
    """One file per (encoder, prompt cut): embeddings differ when either does."""
    enc = ranker.config.encoder or "packaged-minilm"
    tag = _key(f"{enc}|{ranker.config.max_tokens}")
    return cache_dir() / "embeddings" / f"{tag}.pt"


def cached_embed(
    ranker: Ranker,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
    path: Path | None = None,
) -> torch.Tensor:
    """:meth:`Ranker.embed` of ``prompts``, computing only prompts not embedded before.

    Keyed by a hash of the prompt text, so a cached row is only reused for the same text.
    A fine-tuned encoder is never cached (its embeddings change as it trains).
    """
    if ranker.encoder_changed:
        return ranker.embed(prompts, batch_size=batch_size, progress=progress)
    path = path or cache_file(ranker)
    table: dict[str, torch.Tensor] = torch.load(path, weights_only=True) if path.exists() else {}
    keys = [_key(p) for p in prompts]
    missing = sorted({k: p for k, p in zip(keys, prompts, strict=True) if k not in table}.items())
    if missing:
        emb = ranker.embed([p for _, p in missing], batch_size=batch_size, progress=progress)
        table.update({k: row.clone() for (k, _), row in zip(missing, emb, strict=True)})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(table, tmp)
        tmp.replace(path)  # never leave a torn cache behind
    return torch.stack([table[k] for k in keys]) if keys else torch.empty(0)
