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
