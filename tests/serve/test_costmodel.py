"""Cost model: exact recovery of known coefficients, JSON round trip, the calibration file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hasten.serve import costmodel
from hasten.serve.costmodel import TERMS, BatchShape, CostModel, cost_model

TRUE = CostModel(a=6e-3, b_prefill=1.6e-5, c_prefill_ctx=1.5e-9, b_decode=9e-6, c_decode_ctx=4e-8)


def _samples(rng, model, n=40):
    out = []
    for _ in range(n):
        chunks = [(int(rng.integers(0, 2000)), int(rng.integers(1, 600))) for _ in range(2)]
        chunks += [(int(rng.integers(1, 4000)), 1) for _ in range(int(rng.integers(0, 200)))]
        shape = BatchShape.of(chunks)
        out.append((shape, model.iteration_time(shape)))
    return out


@pytest.mark.parametrize("relative", [True, False])
def test_fit_recovers_known_coefficients(relative, seed):
    samples = _samples(np.random.default_rng(seed), TRUE)
    fit = CostModel.fit(samples, relative=relative)
    np.testing.assert_allclose(fit.coefficients, TRUE.coefficients, rtol=1e-9, atol=0)
    assert fit.provenance["samples"] == 40 and fit.provenance["max_rel_err"] < 1e-9


def test_fit_a_subset_of_terms_and_json_rows(seed):
    true = CostModel(a=5e-3, b_prefill=2e-5, b_decode=1e-5)
    rows = [
        {
            "prefill_tokens": s.prefill_tokens,
            "prefill_context": s.prefill_context,
            "decode_seqs": s.decode_seqs,
            "decode_context": s.decode_context,
            "seconds": t,
        }
        for s, t in _samples(np.random.default_rng(seed), true)
    ]
    fit = CostModel.fit(rows, terms=("a", "b_prefill", "b_decode"))
    np.testing.assert_allclose(fit.coefficients, true.coefficients, rtol=1e-9, atol=0)
    assert fit.c_prefill_ctx == fit.c_decode_ctx == 0.0


def test_fit_refuses_what_the_samples_cannot_support():
    shapes = [BatchShape(decode_seqs=n, decode_context=100 * n) for n in (1, 8, 64)]
    samples = [(s, 0.01 + 1e-4 * s.decode_seqs) for s in shapes]
    with pytest.raises(ValueError, match="3 samples cannot fit 5 terms"):
        CostModel.fit(samples)
    # decode_context is always 100 x decode_seqs: the two are not separable.
    with pytest.raises(ValueError, match="do not separate"):
        CostModel.fit(samples, terms=("a", "b_decode", "c_decode_ctx"))
    decreasing = [(BatchShape(prefill_tokens=n), 0.02 - 1e-6 * n) for n in (10, 100, 1000)]
    with pytest.raises(ValueError, match=r"negative.*terms=\('a',\)"):
        CostModel.fit(decreasing, terms=("a", "b_prefill"))
    with pytest.raises(ValueError, match="must include 'a'"):
        CostModel.fit(decreasing, terms=("b_prefill",))


def test_batch_shape_classifies_chunks():
    # A fresh prompt of 4, a chunk of 3 on 8 cached, a decode on 20 cached, a one-token prompt.
    shape = BatchShape.of([(0, 4), (8, 3), (20, 1), (0, 1)])
    assert shape == BatchShape(
        prefill_tokens=8, prefill_context=4 * 4 + 3 * 11 + 1, decode_seqs=1, decode_context=21
    )


def test_json_round_trip_is_exact(tmp_path):
    model = CostModel(
        **TRUE.__dict__ | {"swap_token": 4e-6, "name": "x", "provenance": {"card": "c"}}
    )
    back = CostModel.from_json(model.to_json())
    assert back == model and back.provenance == {"card": "c"}
    model.save(tmp_path / "m.json")
    assert CostModel.load(tmp_path / "m.json") == model
    with pytest.raises(ValueError, match="lacks \\['b_decode'"):
        CostModel.from_dict({"fit": {t: 1.0 for t in TERMS if t != "b_decode"}})


def test_invalid_coefficients():
    with pytest.raises(ValueError, match="b_prefill must be a finite number >= 0, got -1"):
        CostModel(a=1.0, b_prefill=-1)
    with pytest.raises(ValueError, match="must be > 0"):
        CostModel(a=0.0)


def test_preset_is_the_calibration_when_present_else_a_placeholder(tmp_path, monkeypatch):
    monkeypatch.setattr(costmodel, "DATA", tmp_path)
    assert cost_model("llama3-8b-h100").placeholder
    with pytest.raises(ValueError, match=r"unknown cost model 'gpt'.*llama3-8b-h100"):
        cost_model("gpt")
    record = {"fit": dict(zip(TERMS, TRUE.coefficients, strict=True)), "card": "H100"}
    (tmp_path / "costmodel-llama3-8b-h100.json").write_text(json.dumps(record))
    model = cost_model("llama3-8b-h100")
    assert not model.placeholder and model.coefficients == TRUE.coefficients
    assert model.swap_token > 0  # the preset's assumed transfer cost fills the gap
    assert model.name == "llama3-8b-h100" and model.provenance == {"card": "H100"}


def test_shipped_calibration_refits_to_its_coefficients():
    path = costmodel.DATA / "costmodel-llama3-8b-h100.json"
    if not path.exists():
        pytest.skip("no calibration shipped yet")
    record = json.loads(path.read_text())
    fit = CostModel.fit(record["samples"])
    np.testing.assert_allclose(fit.coefficients, cost_model().coefficients, rtol=1e-9)
