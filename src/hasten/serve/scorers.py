"""Predictions for the ``ltr`` and ``bucket`` policies: a file, a ranker, or a synthetic oracle.

Every source yields a table ``{request id: value}`` computed once, up front, for all the
requests a run (or a sweep of runs) can use; a policy then reads it through
:func:`~hasten.serve.policies.precomputed_scores`. Scores never change after arrival (spec
section 2), so scoring ahead of time is the same ordering as scoring per iteration; the
simulator does not charge predictor time either way (the paper measured 0.8-1.7%).

Two kinds of value: ``"score"`` for ``ltr`` (higher = shorter answer, the ranker's
convention) and ``"bucket"`` for ``bucket`` (a whole-number length class, 0 = shortest).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hasten.serve.request import Request

Kind = Literal["score", "bucket"]
KINDS: tuple[Kind, ...] = ("score", "bucket")


@dataclass(frozen=True)
class ScoreTable:
    """Predictions by request id, and what made them.

    ``synthetic`` marks values derived from the true lengths (``--oracle-noise``): they
    show what a ranker of some quality would do, and are never a ranker's result.
    """

    kind: Kind
    values: Mapping[str, float] = field(repr=False)
    source: str
    synthetic: bool = False

    def check_covers(self, requests: Sequence[Request]) -> None:
        missing = [r.id for r in requests if r.id not in self.values]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(requests)} requests have no {self.kind} in "
                f"{self.source} (first: {missing[:3]}); score every request of the trace"
            )

    def tau_b(self, requests: Sequence[Request]) -> float | None:
        """Kendall's tau-b of these predictions against the requests' true output lengths.

        1.0 ranks exactly as the lengths do; the paper's rankers reach 0.52-0.64.
        ``None`` when fewer than two requests or no variation in either.
        """
        from hasten.serve.rank_eval import rank_tau

        if len(requests) < 2:
            return None
        pred = np.array([self.values[r.id] for r in requests], dtype=np.float64)
        # rank_tau wants higher = shorter; a bucket is higher for longer.
        tau = rank_tau(pred if self.kind == "score" else -pred, [r.output_tokens for r in requests])
        return None if math.isnan(tau.tau_b) else tau.tau_b

    def describe(self, requests: Sequence[Request] | None = None) -> dict:
        out = {"kind": self.kind, "source": self.source, "synthetic": self.synthetic}
        if requests is not None:
            out["tau_b"] = self.tau_b(requests)
            out["n"] = len(requests)
        return out


# ---- from a file ----------------------------------------------------------------------
def _finite(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: a score must be a finite number, got {value!r}")
    return float(value)


def load_scores(path: str | os.PathLike, kind: Kind = "score") -> ScoreTable:
    """Read predictions made offline.

    ``.json``: an object ``{"id": score, ...}`` or an array of ``{"id", "score"}`` rows;
    ``.jsonl``: one ``{"id", "score"}`` row a line. For ``kind="bucket"`` the values are
    bucket indices (the ``bucket`` policy checks that they are whole and >= 0).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"scores file {path} does not exist")
    rows: list[tuple[str, object, str]] = []
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
                    rows.append(_score_row(rec, f"{path}:{lineno}"))
    elif path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            rows = [(str(k), v, f"{path}: id {k!r}") for k, v in data.items()]
        elif isinstance(data, list):
            rows = [_score_row(rec, f"{path}: item {i}") for i, rec in enumerate(data)]
        else:
            raise ValueError(f"{path}: expected an object {{id: score}} or an array of rows")
    else:
        raise ValueError(
            f"scores file {path} must be .json ({{id: score}} or [{{id, score}}]) or .jsonl "
            f"(rows {{id, score}}), got {path.suffix!r}"
        )
    values: dict[str, float] = {}
    for rid, value, where in rows:
        if rid in values:
            raise ValueError(f"{where}: id {rid!r} is scored twice")
        values[rid] = _finite(value, where)
    if not values:
        raise ValueError(f"scores file {path} holds no scores")
    return ScoreTable(kind, values, source=f"file {path}")


def _score_row(rec: object, where: str) -> tuple[str, object, str]:
    if not isinstance(rec, dict) or "id" not in rec or "score" not in rec:
        raise ValueError(f"{where}: a row must be an object with 'id' and 'score', got {rec!r:.80}")
    return str(rec["id"]), rec["score"], where


# ---- synthetic oracle -----------------------------------------------------------------
def oracle_noise(
    requests: Sequence[Request], sigma: float, kind: Kind = "score", *, seed: int = 0
) -> ScoreTable:
    """SYNTHETIC predictions from the true lengths: ``-log(length) + N(0, sigma)``.

    For demos and tests, not a ranker: ``sigma=0`` ranks exactly as the lengths (ties
    aside), larger ``sigma`` ranks worse (:meth:`ScoreTable.tau_b` says how much worse).
    ``kind="bucket"`` gives ``floor(log2(noisy length))``: octave-wide length classes.
    Each request's noise depends only on ``seed`` and its position in ``requests``, so a
    subset of the same list gets the same values.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma >= 0:
        raise ValueError(f"oracle noise sigma must be a number >= 0, got {sigma!r}")
    if not math.isfinite(sigma):
        raise ValueError(f"oracle noise sigma must be finite, got {sigma!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    unknown = [r.id for r in requests if r.output_tokens is None]
    if unknown:
        raise ValueError(f"oracle noise needs true lengths; {unknown[:3]} have none")
    lengths = np.array([r.output_tokens for r in requests], dtype=np.float64)
    # Its own stream: the arrival processes draw from default_rng(seed).
    noise = np.random.default_rng((seed, 1)).normal(0.0, sigma, size=len(requests))
    scores = -np.log(lengths) + noise
    values = scores if kind == "score" else np.floor(np.log2(np.maximum(np.exp(-scores), 1.0)))
    label = f"SYNTHETIC oracle-noise(sigma={sigma:g}, seed={seed}): -log(true length) + noise"
    return ScoreTable(
        kind,
        dict(zip((r.id for r in requests), values.tolist(), strict=True)),
        source=label,
        synthetic=True,
    )


# ---- the learned ranker ---------------------------------------------------------------
def ranker_scores(
    requests: Sequence[Request], ranker: str | os.PathLike, kind: Kind = "score"
) -> ScoreTable:
    """Score ``requests`` with a saved ranker (``"default"``: the packaged one).

    ``kind="bucket"`` needs a ranker trained with a classification head.
    """
    try:
        from hasten.serve.ranker import Ranker
    except ImportError as e:
        raise ValueError(
            f"--ranker needs hasten.serve.ranker with torch and transformers, which did not "
            f"import ({e}); pass --scores FILE or --oracle-noise SIGMA instead"
        ) from None
    no_text = [r.id for r in requests if not r.prompt]
    if no_text:
        raise ValueError(
            f"the ranker reads prompt text, but {len(no_text)} of {len(requests)} requests "
            f"carry none (first: {no_text[:3]}; Azure traces have token counts only); "
            f"pass --scores FILE or --oracle-noise SIGMA instead"
        )
    try:
        model = Ranker.default() if str(ranker) == "default" else Ranker.load(ranker)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    prompts = [r.prompt for r in requests]
    if kind == "bucket":
        if model.config.head != "classify":
            raise ValueError(
                f"policy 'bucket' needs a ranker with a classification head; {ranker} has "
                f"head={model.config.head!r} (train one with `hasten rank train --loss "
                f"classify`) or use 'ltr'"
            )
        values = model.buckets(prompts).astype(float)
    else:
        values = model.score(prompts, progress=len(prompts) > 1000).astype(float)
    name = "packaged ranker" if str(ranker) == "default" else f"ranker {ranker}"
    return ScoreTable(
        kind, dict(zip((r.id for r in requests), values.tolist(), strict=True)), source=name
    )
