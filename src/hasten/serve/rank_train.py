"""Train a :class:`~hasten.serve.ranker.Ranker` on recorded lengths: head-only or fine-tuned."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from hasten.serve.losses import LOSSES, bucket_edges, length_buckets, length_labels, ranking_loss
from hasten.serve.rank_eval import (
    RankScore,
    expected_length_ceiling,
    noise_ceiling,
    rank_tau,
    split_by_id,
)
from hasten.serve.ranker import Ranker, RankerConfig, encoder_layers
from hasten.serve.request import Request
from hasten.serve.trace import join_lengths, load_reference_trace, load_trace

MODES = ("head", "finetune")
#: Defaults per mode. Fine-tuning follows the paper (Adam, lr 2e-5, 5 epochs). A head alone
#: on frozen features is a linear model: 2e-5 would barely move it from its initialisation in
#: a few hundred steps, so it takes 1e-3 and more passes (each pass costs milliseconds).
DEFAULT_LR = {"head": 1e-3, "finetune": 2e-5}
DEFAULT_EPOCHS = {"head": 30, "finetune": 5}


@dataclass(frozen=True)
class TrainConfig:
    """How to train: objective, what is trained, and the optimiser.

    Each step is one list of ``list_size`` training prompts (the paper's 32), drawn by a
    seeded shuffle each epoch. Labels are output lengths bucketed by ``bucket_tokens``
    (higher = shorter). ``loss="classify"`` trains the bucket baseline with ``classes``
    quantile buckets instead. ``mode="head"`` freezes the encoder and embeds every prompt
    once (fast on a CPU); ``mode="finetune"`` trains encoder and head (wants a GPU).
    ``layers=N`` fine-tunes only the top N encoder layers (and the head): the backward pass
    stops at the frozen layers, so it is cheaper, and the saved ranker holds just those
    layers in float16 (megabytes, small enough to ship; the whole MiniLM is 88 MB).
    ``lr`` and ``epochs`` default per mode (:data:`DEFAULT_LR`, :data:`DEFAULT_EPOCHS`).
    The optimiser is Adam with L2 ``weight_decay``, as in the paper's trainer.
    """

    loss: Literal["listmle", "pairwise", "classify"] = "listmle"
    mode: Literal["head", "finetune"] = "head"
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float = 0.01
    list_size: int = 32
    bucket_tokens: int = 10
    classes: int = 10
    layers: int | None = None
    seed: int = 0
    # Performance knobs: prompts per encoder call when embedding (head mode and scoring).
    batch_size: int = 32
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; pick one of {LOSSES}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; pick one of {MODES}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.layers is not None and (self.mode != "finetune" or self.layers < 1):
            raise ValueError(
                f"layers={self.layers} needs mode='finetune' and layers >= 1 (the top encoder "
                f"layers to train); mode='head' trains no encoder layer"
            )
        if self.list_size < 2:
            raise ValueError(f"a list needs >= 2 prompts to have an order, got {self.list_size}")
        if self.weight_decay < 0 or self.bucket_tokens < 1 or self.batch_size < 1:
            raise ValueError(
                f"weight_decay ({self.weight_decay}) must be >= 0, bucket_tokens "
                f"({self.bucket_tokens}) and batch_size ({self.batch_size}) >= 1"
            )

    @property
    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.mode]

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]


def labelled_requests(
    prompts: str | os.PathLike | Sequence[Request],
    lengths: str | os.PathLike,
    *,
    sample: int = 0,
) -> list[Request]:
    """Prompts that have a recorded ``sample`` in ``lengths``, with its output length.

    ``prompts`` is a trace file or name (``"sharegpt"``) or requests with prompt text;
    prompts with no row yet (a trace still being generated) are left out.
    """
    requests = load_trace(prompts) if isinstance(prompts, (str, os.PathLike)) else prompts
    joined = join_lengths(requests, lengths, sample=sample, missing="drop")
    no_text = [r.id for r in joined if not r.prompt]
    if no_text:
        raise ValueError(f"requests {no_text[:3]} have no prompt text; the ranker reads prompts")
    if not joined:
        raise ValueError(f"no prompt of {prompts!r} has a sample {sample} in {lengths}")
    return joined


def evaluate(ranker: Ranker, requests: Sequence[Request], *, batch_size: int = 32) -> RankScore:
    """Tau-b of the ranker's scores against the requests' recorded output lengths."""
    scores = ranker.score([r.prompt for r in requests], batch_size=batch_size)
    return rank_tau(scores, [r.output_tokens for r in requests])


def train_ranker(
    requests: Sequence[Request],
    config: TrainConfig | None = None,
    *,
    ranker: Ranker | RankerConfig | None = None,
    device=None,
    embeddings: torch.Tensor | None = None,
) -> Ranker:
    """Train on requests with prompt text and ``output_tokens``; returns the trained ranker.

    ``ranker`` is a ranker to continue from, or the config of a new one (default: packaged
    MiniLM, score head). With ``loss="classify"`` a new ranker gets a classify head with
    quantile bucket edges of these lengths. The returned ranker's ``provenance`` records
    the training settings and data size. In head mode, ``embeddings`` (the ranker's
    :meth:`~Ranker.embed` of these prompts, in order) skips the encoder, so sweeps over
    losses or learning rates embed once.
    """
    cfg = config or TrainConfig()
    if len(requests) < 2:
        raise ValueError(f"training needs >= 2 labelled prompts, got {len(requests)}")
    prompts = [r.prompt for r in requests]
    lengths = np.array([r.output_tokens for r in requests], dtype=np.int64)
    if not isinstance(ranker, Ranker):
        rcfg = ranker or RankerConfig()
        if cfg.loss == "classify" and rcfg.head != "classify":
            rcfg = RankerConfig(
                rcfg.encoder, rcfg.max_tokens, "classify", bucket_edges(lengths, cfg.classes)
            )
        ranker = Ranker.new(rcfg, device=device, seed=cfg.seed)
    elif device is not None:
        ranker.to(device)
    if (cfg.loss == "classify") != (ranker.config.head == "classify"):
        raise ValueError(
            f"loss {cfg.loss!r} does not fit a head={ranker.config.head!r} ranker; "
            f"classify goes with head='classify', listmle/pairwise with head='score'"
        )

    labels = torch.as_tensor(length_labels(lengths, cfg.bucket_tokens))
    edges = ranker.config.bucket_edges
    buckets = torch.as_tensor(length_buckets(lengths, edges) if edges else np.zeros_like(lengths))
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.mode == "head":
        if embeddings is None:
            embeddings = ranker.embed(prompts, batch_size=cfg.batch_size, progress=cfg.progress)
        elif tuple(embeddings.shape) != (len(prompts), ranker.head.in_features):
            raise ValueError(
                f"embeddings are {tuple(embeddings.shape)}, want ({len(prompts)}, "
                f"{ranker.head.in_features}): one encoder row per request, in order"
            )
        losses = _fit_head(ranker, embeddings, labels, buckets, cfg, gen)
    elif embeddings is not None:
        raise ValueError("embeddings= only applies to mode='head' (fine-tuning changes them)")
    else:
        losses = _fit_finetune(ranker, prompts, labels, buckets, cfg, gen)
    ranker.provenance.update(
        train={
            **{k: v for k, v in asdict(cfg).items() if k not in ("progress", "batch_size")},
            "epochs": cfg.resolved_epochs,
            "lr": cfg.resolved_lr,
            "optimizer": "Adam (L2 weight decay)",
            "n_train": len(requests),
            "final_epoch_loss": losses[-1],
        }
    )
    return ranker


def _lists(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch's lists: a seeded shuffle cut into ``size``-prompt lists (a short tail too)."""
    perm = torch.randperm(n, generator=gen)
    # A one-prompt tail has no order to learn (its ListMLE is 0); drop it.
    return [perm[i : i + size] for i in range(0, n, size) if min(size, n - i) >= 2]


def _epochs(cfg: TrainConfig, desc: str):
    epochs = range(cfg.resolved_epochs)
    if not cfg.progress:
        return epochs
    from tqdm.auto import tqdm

    return tqdm(epochs, desc=desc, unit="epoch")


def _steps(cfg: TrainConfig, total: int, desc: str):
    # Fine-tuning on a CPU takes minutes per epoch: count lists, not epochs. A disabled
    # bar's update/set_postfix/close are no-ops, so callers need no checks.
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="list", disable=not cfg.progress)


def _fit_head(ranker, emb, labels, buckets, cfg, gen) -> list[float]:
    """Frozen encoder: train only the head on the prompts' precomputed embedding rows."""
    emb = emb.to(ranker.device, torch.float32)
    labels, buckets = labels.to(ranker.device), buckets.to(ranker.device)
    head = ranker.head.train()
    opt = torch.optim.Adam(head.parameters(), lr=cfg.resolved_lr, weight_decay=cfg.weight_decay)
    history = []
    bar = _epochs(cfg, "train head")
    for _ in bar:
        total, lists = 0.0, _lists(len(emb), cfg.list_size, gen)
        for idx in lists:
            idx = idx.to(ranker.device)
            out = head(emb[idx])
            out = out.squeeze(-1) if ranker.config.head == "score" else out
            loss = ranking_loss(cfg.loss, out, labels[idx], buckets[idx], generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        history.append(total / len(lists))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    head.eval()
    return history


def _trainable_encoder(ranker: Ranker, layers: int | None) -> list[nn.Module]:
    """Put the encoder's trained part in train mode, freeze the rest; returns the trained part."""
    if layers is None:
        ranker.encoder.train()
        ranker.tuned_layers = None  # every layer changes: saved as a whole encoder
        return [ranker.encoder]
    stack = encoder_layers(ranker.encoder)
    if layers > len(stack):
        raise ValueError(
            f"layers={layers} but the encoder has {len(stack)}; pass layers <= {len(stack)} "
            f"or layers=None for all of it"
        )
    top = list(range(len(stack) - layers, len(stack)))
    # Frozen layers stay in eval mode: their dropout would only add noise that scoring,
    # which runs them in eval mode, never sees.
    ranker.encoder.eval().requires_grad_(False)
    for i in top:
        stack[i].train().requires_grad_(True)
    if not (ranker.encoder_changed and ranker.tuned_layers is None):
        # Continuing a partial fine-tune keeps its earlier layers; a whole one stays whole.
        ranker.tuned_layers = tuple(sorted(set(top) | set(ranker.tuned_layers or ())))
    return [stack[i] for i in top]


def _fit_finetune(ranker, prompts, labels, buckets, cfg, gen) -> list[float]:
    """Encoder (or its top ``cfg.layers``) and head together, one list per step; bf16 on CUDA."""
    trained = _trainable_encoder(ranker, cfg.layers)
    ranker.head.train()
    params = [p for m in trained for p in m.parameters()] + list(ranker.head.parameters())
    opt = torch.optim.Adam(params, lr=cfg.resolved_lr, weight_decay=cfg.weight_decay)
    cuda = ranker.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    history = []
    # Dropout draws from the global generator: seed it without disturbing the caller's.
    devices = [ranker.device.index or 0] if cuda else []
    per_epoch = len(_lists(len(prompts), cfg.list_size, torch.Generator()))
    steps = _steps(cfg, per_epoch * cfg.resolved_epochs, "fine-tune")
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        for epoch in range(cfg.resolved_epochs):
            total, lists = 0.0, _lists(len(prompts), cfg.list_size, gen)
            for idx in lists:
                with autocast:
                    batch = ranker.tokenize([prompts[i] for i in idx.tolist()])
                    out = ranker.head(ranker.pool(**batch)).float()
                out = out.squeeze(-1) if ranker.config.head == "score" else out
                idx = idx.to(ranker.device)
                lab, buc = labels.to(ranker.device)[idx], buckets.to(ranker.device)[idx]
                loss = ranking_loss(cfg.loss, out, lab, buc, generator=gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
                steps.update()
            history.append(total / len(lists))
            steps.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.4f}")
    steps.close()
    ranker.encoder.eval().requires_grad_(True)
    ranker.head.eval()
    ranker.encoder_changed = True
    return history


def split_requests(
    requests: Sequence[Request], test_fraction: float = 0.1
) -> tuple[list[Request], list[Request]]:
    """``(train, test)`` by a hash of each id (:func:`hasten.serve.rank_eval.held_out`)."""
    train, test = split_by_id([r.id for r in requests], test_fraction)
    return [requests[i] for i in train], [requests[i] for i in test]


def held_out_report(
    ranker: Ranker,
    test: Sequence[Request],
    lengths: str | os.PathLike,
    *,
    batch_size: int = 32,
) -> dict:
    """Tau-b on ``test`` and, where ``lengths`` has second samples, the noise ceiling.

    The ceiling is given twice: on the test prompts (same prompts as the tau-b, but few
    have a second sample) and on every prompt with both samples (more, so steadier).
    """
    result = evaluate(ranker, test, batch_size=batch_size) if test else None
    table = load_reference_trace(lengths)
    on_test = noise_ceiling(table, ids=[r.id for r in test])
    on_all = noise_ceiling(table)
    return {
        "tau_b": None if result is None else result.tau_b,
        "n": len(test),
        "noise_ceiling": None if on_all is None else asdict(on_all),
        "noise_ceiling_test": None if on_test is None else asdict(on_test),
        # What a perfect predictor of each prompt's mean length would reach (an estimate).
        "expected_length_ceiling": (
            None if on_all is None else expected_length_ceiling(on_all.tau_b)
        ),
    }
