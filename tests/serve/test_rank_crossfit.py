"""Cross-fitted ranker scores: folds are fixed by id, and no prompt is scored by its own head."""

from __future__ import annotations

import json

import pytest
import torch

from hasten.serve.rank_crossfit import crossfit_scores, fold_of
from hasten.serve.rank_train import TrainConfig
from hasten.serve.ranker import RankerConfig
from tests.serve.test_ranker import make_tiny_encoder, synthetic_requests


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-bert-cf"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HASTEN_CACHE", str(tmp_path / "cache"))


def test_embedding_cache_embeds_each_prompt_once(tiny_encoder, monkeypatch):
    from hasten.serve.embed_cache import cache_file, cached_embed
    from hasten.serve.ranker import Ranker

    ranker = Ranker.new(RankerConfig(tiny_encoder, 32), device="cpu")
    first = cached_embed(ranker, ["w1 w2", "w3", "w1 w2"])
    assert cache_file(ranker).is_file()
    seen = []
    real = ranker.embed
    monkeypatch.setattr(ranker, "embed", lambda p, **kw: seen.extend(p) or real(p, **kw))
    again = cached_embed(ranker, ["w3", "w4 w5", "w1 w2"])
    assert seen == ["w4 w5"]  # only the new prompt reaches the encoder
    assert torch.equal(again[0], first[1]) and torch.equal(again[2], first[0])
    torch.testing.assert_close(again[1], real(["w4 w5"])[0])


def test_folds_depend_on_the_id_alone():
    ids = [f"p{i}" for i in range(500)]
    folds = [fold_of(i, 5) for i in ids]
    assert folds == [fold_of(i, 5) for i in ids]
    assert set(folds) == set(range(5))
    # Roughly balanced: no fold holds more than twice its share.
    assert max(folds.count(k) for k in range(5)) < 2 * 500 / 5


def test_out_of_fold_scores_rank_a_learnable_order(tiny_encoder):
    reqs = synthetic_requests(160, seed=3)
    cfg = TrainConfig(epochs=40, lr=1e-2, list_size=16, progress=False)
    fit = crossfit_scores(
        reqs, cfg, folds=4, ranker=RankerConfig(tiny_encoder, 32), device="cpu", progress=False
    )
    assert set(fit.scores) == {r.id for r in reqs}
    assert fit.folds == [fold_of(r.id, 4) for r in reqs]
    # Length grows with the count of w0 in the prompt: a held-out head must see that.
    assert fit.pooled.tau_b > 0.4, fit
    assert all(t is not None and t.tau_b > 0.2 for t in fit.per_fold), fit.per_fold


def test_a_fold_is_scored_by_a_head_that_never_saw_it(tiny_encoder):
    """Flip the lengths of one fold: its out-of-fold scores must not follow the flip."""
    reqs = synthetic_requests(160, seed=4)
    cfg = TrainConfig(epochs=40, lr=1e-2, list_size=16, progress=False)
    rc = RankerConfig(tiny_encoder, 32)
    base = crossfit_scores(reqs, cfg, folds=4, ranker=rc, device="cpu", progress=False)
    flipped = [
        r
        if fold_of(r.id, 4)
        else type(r)(id=r.id, prompt=r.prompt, output_tokens=1000 - r.output_tokens)
        for r in reqs
    ]
    again = crossfit_scores(flipped, cfg, folds=4, ranker=rc, device="cpu", progress=False)
    fold0 = [r.id for r in reqs if fold_of(r.id, 4) == 0]
    # Fold 0 was trained on by nothing in either run but the other folds, which are equal.
    assert [base.scores[i] for i in fold0] == pytest.approx([again.scores[i] for i in fold0])


def test_bad_settings(tiny_encoder):
    reqs = synthetic_requests(10, seed=0)
    rc = RankerConfig(tiny_encoder, 32)
    with pytest.raises(ValueError, match="folds must be in"):
        crossfit_scores(reqs, folds=1, ranker=rc, device="cpu", progress=False)
    with pytest.raises(ValueError, match="mode='head'"):
        crossfit_scores(reqs, TrainConfig(mode="finetune"), ranker=rc, device="cpu")
    with pytest.raises(ValueError, match="listmle"):
        crossfit_scores(reqs, TrainConfig(loss="classify"), ranker=rc, device="cpu")


def test_cli_writes_a_scores_file_the_simulator_reads(tiny_encoder, tmp_path, capsys):
    from hasten.cli import main
    from hasten.serve.scorers import load_scores

    reqs = synthetic_requests(60, seed=5)
    prompts, lengths = tmp_path / "prompts.jsonl", tmp_path / "lengths.jsonl"
    prompts.write_text("".join(json.dumps({"id": r.id, "prompt": r.prompt}) + "\n" for r in reqs))
    rows = [
        {"id": r.id, "sample": 0, "prompt_tokens": 5, "output_tokens": r.output_tokens}
        for r in reqs
    ]
    lengths.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "scores.jsonl"
    args = [
        "rank",
        "crossfit",
        "--prompts",
        str(prompts),
        "--lengths",
        str(lengths),
        "--encoder",
        tiny_encoder,
        "--max-tokens",
        "32",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main([*args, "--folds", "1"]) == 2
    assert "folds must be in" in capsys.readouterr().err
    assert main([*args, "--folds", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["n"] == 60 and len(report["per_fold_tau_b"]) == 3
    table = load_scores(out)
    assert set(table.values) == {r.id for r in reqs}
    assert table.tau_b(reqs) == pytest.approx(report["tau_b"])
