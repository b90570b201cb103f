"""Engine iteration time as a linear model of the batch's shape, fitted to measured steps."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Coefficient names, in the order of :meth:`BatchShape.features`.
TERMS = ("a", "b_prefill", "c_prefill_ctx", "b_decode", "c_decode_ctx")
FEATURES = (
    "a + b_prefill*prefill_tokens + c_prefill_ctx*prefill_tokens*context "
    "+ b_decode*decode_seqs + c_decode_ctx*decode_context_tokens"
)
DATA = Path(__file__).with_name("data")


@dataclass(frozen=True)
class BatchShape:
    """What one iteration computes, in the cost model's terms.

    Every scheduled request computes a chunk of ``n`` tokens on top of ``computed`` cached
    ones and attends over ``context = computed + n`` tokens. A chunk of one token with KV
    already cached is a *decode*; any other chunk is *prefill* (a fresh prompt, a piece of
    a chunked one, or a recompute after preemption).
    """

    prefill_tokens: int = 0
    #: Sum over prefill chunks of ``n * context``: the attention work of prefill.
    prefill_context: int = 0
    decode_seqs: int = 0
    #: Sum over decode chunks of ``context``: KV tokens read by decode attention.
    decode_context: int = 0

    @classmethod
    def of(cls, chunks: Iterable[tuple[int, int]]) -> BatchShape:
        """From ``(computed, n)`` per scheduled request."""
        pt = pc = ds = dc = 0
        for computed, n in chunks:
            if n == 1 and computed > 0:
                ds += 1
                dc += computed + 1
            else:
                pt += n
                pc += n * (computed + n)
        return cls(pt, pc, ds, dc)

    def features(self) -> tuple[float, float, float, float, float]:
        return (
            1.0,
            self.prefill_tokens,
            self.prefill_context,
            self.decode_seqs,
            self.decode_context,
        )


def _row(sample) -> tuple[tuple[float, ...], float]:
    """One calibration sample as (features, seconds); see :meth:`CostModel.fit`."""
    if isinstance(sample, Mapping):
        if "x" in sample:
            x = tuple(float(v) for v in sample["x"])
            if len(x) != len(TERMS):
                raise ValueError(f"sample 'x' needs {len(TERMS)} features {TERMS}, got {x}")
        else:
            keys = ("prefill_tokens", "prefill_context", "decode_seqs", "decode_context")
            x = BatchShape(**{k: sample.get(k, 0) for k in keys}).features()
        return x, float(sample["seconds"])
    shape, seconds = sample
    if not isinstance(shape, BatchShape):
        raise TypeError(
            f"a sample is (BatchShape, seconds) or a mapping with 'seconds'; got {sample!r}"
        )
    return shape.features(), float(seconds)


@dataclass(frozen=True)
class CostModel:
    """Seconds per engine iteration: ``a + b_prefill*prefill_tokens + ...`` (see ``FEATURES``).

    ``a`` is the fixed cost of a step (weights streamed once, launches), ``b_prefill`` and
    ``b_decode`` the per-token linear-layer cost of prefill and decode tokens, and the two
    ``c`` terms the attention cost (``c_decode_ctx`` per KV token read). ``swap_token`` is
    the seconds to move one token's KV between GPU and CPU (swap preemption only).
    ``placeholder`` marks numbers that were not measured.
    """

    a: float
    b_prefill: float = 0.0
    c_prefill_ctx: float = 0.0
    b_decode: float = 0.0
    c_decode_ctx: float = 0.0
    swap_token: float = 0.0
    name: str = ""
    placeholder: bool = False
    provenance: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for term in (*TERMS, "swap_token"):
            v = getattr(self, term)
            if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"CostModel.{term} must be a finite number >= 0, got {v!r}")
        if self.a <= 0:
            # Every iteration must take time, or a simulation could run forever at one instant.
            raise ValueError(f"CostModel.a (fixed seconds per iteration) must be > 0, got {self.a}")

    @classmethod
    def constant(cls, seconds: float = 1.0) -> CostModel:
        """Every iteration takes ``seconds`` (known-answer tests)."""
        return cls(a=seconds, name=f"constant-{seconds}s")

    @property
    def coefficients(self) -> tuple[float, ...]:
        return tuple(getattr(self, t) for t in TERMS)

    def iteration_time(self, shape: BatchShape) -> float:
        return (
            self.a
            + self.b_prefill * shape.prefill_tokens
            + self.c_prefill_ctx * shape.prefill_context
            + self.b_decode * shape.decode_seqs
            + self.c_decode_ctx * shape.decode_context
        )

    def swap_time(self, tokens: int) -> float:
        return self.swap_token * tokens

    @classmethod
    def fit(
        cls,
        samples: Iterable,
        *,
        terms: Iterable[str] = TERMS,
        relative: bool = True,
        name: str = "",
        swap_token: float = 0.0,
        provenance: Mapping[str, object] | None = None,
    ) -> CostModel:
        """Least-squares fit to measured iterations.

        A sample is ``(BatchShape, seconds)``, or a mapping with ``seconds`` and either the
        feature vector ``x`` (ordered as ``TERMS``) or :class:`BatchShape`'s field names.
        ``terms`` picks the coefficients to fit (``"a"`` always; the rest are 0).
        ``relative`` minimizes relative error (each row weighted by 1/seconds), which keeps
        6 ms decode steps from being drowned by 200 ms prefills.
        """
        terms = tuple(terms)
        unknown = [t for t in terms if t not in TERMS]
        if unknown or "a" not in terms:
            raise ValueError(f"terms must include 'a' and come from {TERMS}; got {terms}")
        rows = [_row(s) for s in samples]
        cols = [TERMS.index(t) for t in terms]
        if len(rows) < len(cols):
            raise ValueError(f"{len(rows)} samples cannot fit {len(cols)} terms {terms}")
        X = np.array([r[0] for r in rows], dtype=np.float64)[:, cols]
        y = np.array([r[1] for r in rows], dtype=np.float64)
        if (y <= 0).any():
            raise ValueError(f"measured seconds must be > 0; got {y[y <= 0][:5]}")
        w = 1.0 / y if relative else np.ones_like(y)
        A = X * w[:, None]
        # Features span 1 to ~1e8 (tokens x context): scale columns to 1 so that the solve
        # and the rank test see the design's shape, not its units.
        scale = np.abs(A).max(axis=0)
        scale[scale == 0] = 1.0
        sol, *_ = np.linalg.lstsq(A / scale, y * w, rcond=None)
        coef = sol / scale
        # A rank-deficient design splits collinear terms arbitrarily; that must not pass.
        rank = np.linalg.matrix_rank(A / scale)
        if rank < len(cols):
            raise ValueError(
                f"the samples do not separate the terms {terms} (rank {rank} < {len(cols)}); "
                f"vary the batch shapes or drop terms"
            )
        fitted = dict(zip(terms, (float(c) for c in coef), strict=True))
        negative = {t: v for t, v in fitted.items() if v < 0}
        if negative:
            keep = tuple(t for t in terms if t not in negative)
            raise ValueError(
                f"fitted coefficients {negative} are negative: the samples do not support "
                f"them; fit with terms={keep}"
            )
        pred = X @ coef
        info = {
            "samples": len(rows),
            "relative": relative,
            "max_rel_err": float(np.max(np.abs(pred - y) / y)),
            "rmse_s": float(np.sqrt(np.mean((pred - y) ** 2))),
            **(provenance or {}),
        }
        return cls(**fitted, swap_token=swap_token, name=name, provenance=info)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "fit": {t: getattr(self, t) for t in TERMS},
            "swap_token": self.swap_token,
            "placeholder": self.placeholder,
            "features": FEATURES,
            **self.provenance,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: Mapping, *, name: str = "", swap_token: float = 0.0) -> CostModel:
        """From :meth:`to_dict`'s layout: coefficients under ``fit``, all else is provenance.

        ``name`` and ``swap_token`` are used when the record has none.
        """
        if "fit" not in d:
            raise ValueError(f"a cost model record needs a 'fit' mapping of {TERMS}; got {list(d)}")
        fit = d["fit"]
        missing = [t for t in TERMS if t not in fit]
        if missing:
            raise ValueError(f"cost model 'fit' lacks {missing}; it needs all of {TERMS}")
        reserved = {"name", "fit", "swap_token", "placeholder", "features"}
        return cls(
            **{t: float(fit[t]) for t in TERMS},
            swap_token=float(d.get("swap_token", swap_token)),
            name=str(d.get("name", name)),
            placeholder=bool(d.get("placeholder", False)),
            provenance={k: v for k, v in d.items() if k not in reserved},
        )

    @classmethod
    def from_json(cls, text: str, **kwargs) -> CostModel:
        return cls.from_dict(json.loads(text), **kwargs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> CostModel:
        return cls.from_json(Path(path).read_text(), **kwargs)


# Llama-3-8B KV is 2 (K, V) x 32 layers x 8 kv heads x 128 dims x 2 bytes = 128 KiB per token;
# over PCIe 5 at an assumed 32 GB/s that is ~4.1 us. Not measured: a placeholder.
_SWAP_LLAMA3_8B = 131072 / 32e9

#: PLACEHOLDER numbers (roofline guesses for Llama-3-8B bf16 on one H100, not measured),
#: used only while ``data/costmodel-llama3-8b-h100.json`` is missing.
PLACEHOLDER_LLAMA3_8B_H100 = CostModel(
    a=5e-3,
    b_prefill=4e-5,
    c_prefill_ctx=1.3e-9,
    b_decode=3e-5,
    c_decode_ctx=5e-8,
    swap_token=_SWAP_LLAMA3_8B,
    name="llama3-8b-h100",
    placeholder=True,
    provenance={"source": "PLACEHOLDER: roofline guesses, not measured; calibrate on the card"},
)
_PLACEHOLDERS = {"llama3-8b-h100": PLACEHOLDER_LLAMA3_8B_H100}
_SWAP = {"llama3-8b-h100": _SWAP_LLAMA3_8B}


def cost_model_names() -> list[str]:
    found = {p.name[len("costmodel-") : -len(".json")] for p in DATA.glob("costmodel-*.json")}
    return sorted(found | set(_PLACEHOLDERS))


def cost_model(name: str = "llama3-8b-h100") -> CostModel:
    """A named preset: the calibration in ``data/costmodel-<name>.json`` when it exists,
    else the placeholder (``placeholder=True``).

    Calibrations that did not measure swap get the preset's assumed transfer cost.
    """
    path = DATA / f"costmodel-{name}.json"
    if path.exists():
        return CostModel.load(path, name=name, swap_token=_SWAP.get(name, 0.0))
    if name in _PLACEHOLDERS:
        return _PLACEHOLDERS[name]
    raise ValueError(f"unknown cost model {name!r}; choose one of {cost_model_names()}")


#: The default engine: Llama-3-8B on one H100 (calibrated if the JSON is present).
LLAMA3_8B_H100 = cost_model("llama3-8b-h100")
