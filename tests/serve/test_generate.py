"""`hasten trace generate`: what is left to do after an interruption, and the real engine."""

from __future__ import annotations

import json

import pytest

from hasten.serve.generate import GenerateConfig, done_keys, work_list
from hasten.serve.request import Request


def _reqs(n):
    return [Request(id=f"r{i}", prompt=f"prompt {i}") for i in range(n)]


def test_resume_skips_finished_draws_and_a_torn_last_line(tmp_path):
    out = tmp_path / "lengths.jsonl"
    rows = [{"id": "r0", "sample": 0}, {"id": "r1", "sample": 0}, {"id": "r0", "sample": 1}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "r2", "sam')
    assert done_keys(out) == {("r0", 0), ("r1", 0), ("r0", 1)}
    todo = work_list(_reqs(4), GenerateConfig(out=out, second_samples=2))
    assert [(r.id, s) for r, s in todo] == [("r2", 0), ("r3", 0), ("r1", 1)]


def test_fresh_run_does_every_prompt_then_the_second_samples(tmp_path):
    todo = work_list(_reqs(3), GenerateConfig(out=tmp_path / "none.jsonl", second_samples=5))
    assert [(r.id, s) for r, s in todo] == [(f"r{i}", 0) for i in range(3)] + [
        (f"r{i}", 1) for i in range(3)
    ]


def test_bad_settings_explain_themselves(tmp_path):
    with pytest.raises(ValueError, match="max_model_len 1000 leaves no room"):
        GenerateConfig(out=tmp_path / "x", max_model_len=1000, max_tokens=1024)
    with pytest.raises(ValueError, match="batch"):
        GenerateConfig(out=tmp_path / "x", batch=0)


@pytest.mark.slow
def test_real_vllm_generation_records_lengths(tmp_path):
    """The packaged SmolLM2 through vLLM on CPU (minutes: never in CI)."""
    pytest.importorskip("vllm")
    from hasten.serve.generate import generate_lengths

    out = tmp_path / "lengths.jsonl"
    reqs = [Request(id="a", prompt="Say hi."), Request(id="b", prompt="Count to three.")]
    generate_lengths(reqs, GenerateConfig(out=out, max_tokens=32, second_samples=1, batch=2))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["id"], r["sample"]) for r in rows) == [("a", 0), ("a", 1), ("b", 0)]
    assert all(1 <= r["output_tokens"] <= 32 and r["prompt_tokens"] > 3 for r in rows)


# ---- the transformers engine ----------------------------------------------------------
def test_batches_sort_by_length_and_respect_the_token_budget():
    from hasten.serve.generate_hf import batches_by_tokens

    items = [([0] * n, f"p{n}") for n in (30, 5, 12, 7, 40, 9)]
    batches = batches_by_tokens(items, max_tokens=10, cap=3, budget=70)
    flat = [p for b in batches for _, p in b]
    assert flat == ["p5", "p7", "p9", "p12", "p30", "p40"]
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * (max(len(ids) for ids, _ in b) + 10) <= 70
    # A single item wider than the budget still gets a batch of its own.
    assert batches_by_tokens([([0] * 100, "big")], 10, 4, 50) == [[([0] * 100, "big")]]


def test_output_length_counts_through_the_first_end_token():
    from hasten.serve.generate_hf import output_length

    assert output_length([5, 6, 2, 9, 9], {2}) == (3, "stop")
    assert output_length([5, 6, 7], {2, 0}) == (3, "length")
    assert output_length([0], {2, 0}) == (1, "stop")


def _tiny_chat_llama(folder):
    """A random 2-layer Llama with a word-level tokenizer and a ChatML template, saved."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<|im_start|>", "<|im_end|>", "<unk>", "user", "assistant", "\n"]
    words += [f"w{i}" for i in range(58)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<unk>", pad_token="<unk>"
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
        "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=1,
        bos_token_id=0,
        pad_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


def test_transformers_engine_records_every_draw_and_resumes(tmp_path):
    """The real transformers generate loop on a tiny random Llama (CPU, seconds)."""
    from hasten.serve.generate import generate_lengths

    model = _tiny_chat_llama(tmp_path / "llama")
    out = tmp_path / "lengths.jsonl"
    reqs = [Request(id=f"q{i}", prompt=" ".join(f"w{j}" for j in range(i + 1))) for i in range(5)]
    cfg = GenerateConfig(
        out=out,
        model=model,
        engine="transformers",
        max_tokens=12,
        second_samples=2,
        batch=2,
        max_model_len=64,
    )
    generate_lengths(reqs[:3], cfg, log=lambda _: None)
    generate_lengths(reqs, cfg, log=lambda _: None)  # resumes: only what is missing
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    keys = sorted((r["id"], r["sample"]) for r in rows)
    assert keys == sorted([(f"q{i}", 0) for i in range(5)] + [("q0", 1), ("q1", 1)])
    for r in rows:
        i = int(r["id"][1:])
        # <|im_start|> user w0..wi <|im_end|> <|im_start|> assistant
        assert r["prompt_tokens"] == i + 1 + 5
        assert 1 <= r["output_tokens"] <= 12
        assert r["finish_reason"] == "stop" or r["output_tokens"] == 12
    meta = json.loads((tmp_path / "lengths.jsonl.meta.json").read_text())
    assert meta["engine"] == "transformers" and meta["dtype"] == "float32"


def test_unknown_engine_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        GenerateConfig(out=tmp_path / "x", engine="tgi")
