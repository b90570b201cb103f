"""Ranking losses on one list of prompts: ListMLE, pairwise logistic, bucket classification."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Losses :func:`ranking_loss` knows; ``classify`` needs a head with one logit per bucket.
LOSSES = ("listmle", "pairwise", "classify")


def length_labels(output_tokens, bucket_tokens: int = 10) -> np.ndarray:
    """Ranking labels from output lengths: ``-(length // bucket_tokens)``, higher = shorter.

    Bucketing by 10 tokens (the paper's choice) makes answers a few tokens apart tie, so the
    loss does not chase sampling noise; ties are broken at random in each list.
    """
    if bucket_tokens < 1:
        raise ValueError(f"bucket_tokens must be >= 1, got {bucket_tokens}")
    lengths = np.asarray(output_tokens, dtype=np.int64)
    if lengths.size and lengths.min() < 1:
        raise ValueError(f"output lengths must be >= 1, got {int(lengths.min())}")
    return -(lengths // bucket_tokens)


def bucket_edges(output_tokens, classes: int) -> tuple[int, ...]:
    """Up to ``classes - 1`` increasing length edges at the training lengths' quantiles.

    Quantile edges give classes of about equal size; equal-width buckets over 1..1,024 would
    put most answers of a small model in the first two or three classes. Quantiles that
    coincide merge (a fifth of the answers can sit at the ``max_tokens`` cap, all one
    length), so a piled-up distribution gets fewer than ``classes`` buckets.
    """
    if classes < 2:
        raise ValueError(f"classification needs classes >= 2, got {classes}")
    q = np.quantile(np.asarray(output_tokens, dtype=np.float64), np.arange(1, classes) / classes)
    edges = np.unique(np.ceil(q).astype(np.int64))
    # An edge at the minimum would leave bucket 0 (lengths below it) empty.
    edges = edges[edges > np.min(output_tokens)]
    if len(edges) == 0:
        raise ValueError(f"all {len(q)} quantiles of the lengths coincide; nothing to classify")
    return tuple(int(x) for x in edges)


def length_buckets(output_tokens, edges) -> np.ndarray:
    """Bucket index of each length, 0 = shortest: lengths ``< edges[0]`` are bucket 0."""
    return np.searchsorted(np.asarray(edges), np.asarray(output_tokens), side="right")


def listmle(scores: torch.Tensor, labels: torch.Tensor, *, generator=None) -> torch.Tensor:
    """ListMLE of one list: ``sum_i [logsumexp(s_i..s_n) - s_i]`` with ``s`` sorted by label.

    The list is sorted by label, highest (shortest answer) first; equal labels are put in a
    random order (drawn from ``generator``), so no tie order is learned as if it were real.
    It is the negative log-likelihood of the true order under the Plackett-Luce model.
    """
    _check_list(scores, labels)
    perm = torch.randperm(len(scores), generator=generator, device="cpu").to(scores.device)
    # A stable sort of a randomly permuted list breaks ties at random.
    order = perm[torch.sort(labels[perm], descending=True, stable=True).indices]
    s = scores[order]
    # logsumexp over every suffix s_i..s_n: a reversed cumulative logsumexp.
    tails = torch.logcumsumexp(s.flip(0), dim=0).flip(0)
    return (tails - s).sum()


def pairwise(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss ``log(1 + exp(s_j - s_i))`` over pairs with label_i > label_j.

    Pairs with equal labels carry no order and are left out; a list with no such pair
    gives 0 (with a gradient of zeros, so a step on it is a no-op).
    """
    _check_list(scores, labels)
    better = labels[:, None] > labels[None, :]
    if not better.any():
        return scores.sum() * 0.0
    margin = scores[:, None] - scores[None, :]
    return F.softplus(-margin[better]).mean()


def classify(logits: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of bucket logits ``[n, classes]`` against bucket indices ``[n]``."""
    if logits.ndim != 2 or buckets.shape != logits.shape[:1]:
        raise ValueError(
            f"classify wants logits [n, classes] and buckets [n], got "
            f"{tuple(logits.shape)} and {tuple(buckets.shape)}"
        )
    return F.cross_entropy(logits, buckets)


def expected_bucket_score(logits: torch.Tensor) -> torch.Tensor:
    """A ranking score from bucket logits: minus the expected bucket, higher = shorter."""
    index = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    return -(logits.softmax(-1) * index).sum(-1)


def ranking_loss(
    loss: str, out: torch.Tensor, labels: torch.Tensor, buckets: torch.Tensor, *, generator=None
) -> torch.Tensor:
    """The loss named ``loss`` (one of :data:`LOSSES`) on one list's head outputs."""
    if loss == "listmle":
        return listmle(out, labels, generator=generator)
    if loss == "pairwise":
        return pairwise(out, labels)
    if loss == "classify":
        return classify(out, buckets)
    raise ValueError(f"unknown loss {loss!r}; pick one of {LOSSES}")


def _check_list(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"a list wants scores [n] and labels [n], got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )
