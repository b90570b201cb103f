"""How well scores rank lengths: Kendall's tau-b, a held-out split by id, the noise ceilings."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hasten.serve.trace import Lengths, load_reference_trace

#: Pairs compared per chunk by the NumPy tau-b (bounds its memory at ~8 MB of int8).
_PAIRS_PER_CHUNK = 8_000_000


@dataclass(frozen=True)
class RankScore:
    """Kendall's tau-b of a ranking and the number of items it was measured on."""

    tau_b: float
    n: int

    def __str__(self) -> str:
        return f"tau-b {self.tau_b:.3f} (n={self.n})"


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b of two equal-length sequences; ties in either count as in scipy.

    ``(concordant - discordant) / sqrt(pairs untied in x * pairs untied in y)``; NaN when
    either side is constant. Uses scipy when installed, else an exact O(n^2) NumPy count
    (chunked; about a second for 10k items).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"tau-b wants two 1-D sequences of one length, got {x.shape}, {y.shape}")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("tau-b input holds NaN; drop those items first")
    if len(x) < 2:
        return math.nan
    try:
        from scipy.stats import kendalltau
    except ImportError:
        return kendall_tau_b_numpy(x, y)
    return float(kendalltau(x, y, variant="b").statistic)


def kendall_tau_b_numpy(x, y) -> float:
    """The reference tau-b: every pair's sign product, counted exactly (no scipy)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    s = untied_x = untied_y = 0
    rows = max(1, _PAIRS_PER_CHUNK // max(n, 1))
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        sx = np.sign(x[lo:hi, None] - x[None, :]).astype(np.int8)
        sy = np.sign(y[lo:hi, None] - y[None, :]).astype(np.int8)
        # Only pairs i < j: mask the lower triangle (and the diagonal) of this block.
        upper = np.arange(n)[None, :] > np.arange(lo, hi)[:, None]
        s += int((sx * sy)[upper].sum(dtype=np.int64))
        untied_x += int(np.count_nonzero(sx[upper]))
        untied_y += int(np.count_nonzero(sy[upper]))
    if untied_x == 0 or untied_y == 0:
        return math.nan
    return s / math.sqrt(untied_x * untied_y)


def rank_tau(scores, output_tokens) -> RankScore:
    """Tau-b of ranker scores against true lengths, signed so a good ranking is positive.

    Scores are higher for shorter answers, so this is tau-b of ``(score, -length)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    lengths = np.asarray(output_tokens, dtype=np.float64)
    return RankScore(kendall_tau_b(scores, -lengths), len(scores))


def held_out(request_id: str, test_fraction: float = 0.1, *, salt: str = "hasten-ranker") -> bool:
    """Whether ``request_id`` is in the test split: a hash of the id, so it never moves.

    The split depends on the id alone (not on file order or on which rows exist yet), so a
    prompt stays on one side as a trace grows, and no prompt is in both train and test.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    digest = hashlib.sha256(f"{salt}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64 < test_fraction


def split_by_id(
    ids: Sequence[str], test_fraction: float = 0.1, *, salt: str = "hasten-ranker"
) -> tuple[list[int], list[int]]:
    """Indices of ``ids`` in the (train, test) splits of :func:`held_out`."""
    train, test = [], []
    for i, rid in enumerate(ids):
        (test if held_out(rid, test_fraction, salt=salt) else train).append(i)
    return train, test


def noise_ceiling(
    lengths: str | os.PathLike | Lengths, *, ids: Sequence[str] | None = None
) -> RankScore | None:
    """Tau-b of sample 0's against sample 1's output lengths, for prompts that have both.

    A second answer to the same prompt is the best any prompt-only predictor can hope to
    match (the paper's "oracle"); ``ids`` restricts it to those prompts (e.g. the test
    split). ``None`` when fewer than two prompts have both samples.
    """
    if isinstance(lengths, (str, os.PathLike)):
        lengths = load_reference_trace(lengths)
    keep = None if ids is None else set(ids)
    pairs = [
        (per_id[0][1], per_id[1][1])
        for rid, per_id in lengths.items()
        if 0 in per_id and 1 in per_id and (keep is None or rid in keep)
    ]
    if len(pairs) < 2:
        return None
    a, b = np.array(pairs, dtype=np.float64).T
    return RankScore(kendall_tau_b(a, b), len(pairs))


def expected_length_ceiling(sample_tau: float) -> float:
    """Estimated tau-b of a predictor that knew each prompt's expected length, given the
    tau-b of two independent samples (:func:`noise_ceiling`).

    A second sample carries sampling noise of its own, so it is not an upper bound on a
    predictor. If a length is a per-prompt mean plus independent noise on a Gaussian copula
    (tau-b is blind to monotone transforms of either side), two samples correlate at
    ``r = sin(pi * tau / 2)``, the mean and one sample at ``sqrt(r)``, and tau-b follows back
    as ``(2 / pi) * asin(sqrt(r))``: 0.267 becomes 0.44. NaN for ``sample_tau <= 0``.
    """
    if not -1.0 <= sample_tau <= 1.0:
        raise ValueError(f"sample_tau must be a tau-b in [-1, 1], got {sample_tau}")
    if sample_tau <= 0:
        return math.nan
    r = math.sin(math.pi * sample_tau / 2)
    return 2 / math.pi * math.asin(math.sqrt(r))
