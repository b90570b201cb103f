"""Out-of-fold ranker scores: every prompt scored by a head that never saw it in training."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from hasten.serve.rank_eval import RankScore, rank_tau
from hasten.serve.rank_train import TrainConfig, train_ranker
from hasten.serve.ranker import Ranker, RankerConfig
from hasten.serve.request import Request


def fold_of(request_id: str, folds: int, *, salt: str = "hasten-ranker-folds") -> int:
    """The fold of ``request_id``: a hash of the id, so it never moves as a trace grows."""
    digest = hashlib.sha256(f"{salt}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % folds


@dataclass(frozen=True)
class CrossFit:
    """Out-of-fold scores by request id (higher = shorter) and how well they rank."""

    scores: dict[str, float]
    folds: list[int]
    pooled: RankScore
    per_fold: list[RankScore | None]


def crossfit_scores(
    requests: Sequence[Request],
    config: TrainConfig | None = None,
    *,
    folds: int = 10,
    ranker: RankerConfig | None = None,
    device=None,
    embeddings: torch.Tensor | None = None,
    progress: bool = True,
) -> CrossFit:
    """Train ``folds`` frozen-encoder heads, each on all folds but one, and score that one.

    The result gives every request a prediction from a model that did not train on it, so
    a simulation can use *all* of a trace with honest predicted ranks, not only a 10% test
    split. Each prompt is embedded once ever (cached on disk, see
    :mod:`hasten.serve.embed_cache`); ``embeddings`` skips even that.
    """
    cfg = replace(config or TrainConfig(), progress=False)
    if cfg.mode != "head":
        raise ValueError(
            f"cross-fitting trains {folds} models; it supports mode='head' (frozen encoder, "
            f"embedded once), got mode={cfg.mode!r}"
        )
    if cfg.loss == "classify":
        raise ValueError("cross-fitting scores for ltr: use loss 'listmle' or 'pairwise'")
    if not 2 <= folds <= len(requests):
        raise ValueError(f"folds must be in [2, {len(requests)}] (the requests), got {folds}")
    base = Ranker.new(ranker, device=device, seed=cfg.seed)
    if embeddings is None:
        from hasten.serve.embed_cache import cached_embed

        embeddings = cached_embed(
            base, [r.prompt for r in requests], batch_size=cfg.batch_size, progress=progress
        )
    fold = np.array([fold_of(r.id, folds) for r in requests])
    scores = np.empty(len(requests), dtype=np.float64)
    per_fold: list[RankScore | None] = []
    rounds = range(folds)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="cross-fit", unit="fold")
    for k in rounds:
        test = np.flatnonzero(fold == k)
        train = np.flatnonzero(fold != k)
        if len(test) == 0:
            per_fold.append(None)
            continue
        # Every fold starts from the same initial head; the frozen encoder is shared.
        model = Ranker(
            base.config, base.encoder, base.tokenizer, copy.deepcopy(base.head), device=base.device
        )
        train_ranker([requests[i] for i in train], cfg, ranker=model, embeddings=embeddings[train])
        scores[test] = model.score_embeddings(embeddings[test])
        per_fold.append(
            rank_tau(scores[test], [requests[i].output_tokens for i in test])
            if len(test) > 1
            else None
        )
    pooled = rank_tau(scores, [r.output_tokens for r in requests])
    return CrossFit(
        scores=dict(zip((r.id for r in requests), scores.tolist(), strict=True)),
        folds=fold.tolist(),
        pooled=pooled,
        per_fold=per_fold,
    )
