"""The engine-independent pieces the vLLM scheduler runs on: displacement, fallback, settings."""

from __future__ import annotations

import math
import random

import pytest

from hasten.serve.batching import displacements
from hasten.serve.engine_settings import EngineSchedulerConfig, parse_starvation
from hasten.serve.fallback import FallbackScorer, prompt_length_scores
from hasten.serve.live import LiveJobs
from hasten.serve.policies import FCFS, LTR, MLFQ, Job
from hasten.serve.prompt_text import PromptText
from hasten.serve.request import Request
from tests.serve.tiny_llm import make_tokenizer


def jobs(*names: str) -> dict[str, Job]:
    return {n: Job(request=Request(id=n, prompt_tokens=1), seq=i) for i, n in enumerate(names)}


# ---- displacements ----------------------------------------------------------------------
def test_no_preemption_while_a_slot_is_free():
    j = jobs("w", "r")
    assert displacements([j["w"], j["r"]], {j["r"]}, {j["w"]}, slots=2) == []


def test_a_better_waiting_job_displaces_the_lowest_ranked_running_one():
    j = jobs("w", "r1", "r2")
    ranked = [j["w"], j["r1"], j["r2"]]
    assert displacements(ranked, {j["r1"], j["r2"]}, {j["w"]}, slots=2) == [j["r2"]]


def test_a_worse_waiting_job_displaces_nobody():
    j = jobs("r1", "r2", "w")
    ranked = [j["r1"], j["r2"], j["w"]]
    assert displacements(ranked, {j["r1"], j["r2"]}, {j["w"]}, slots=2) == []


def test_free_slots_are_used_before_anyone_is_displaced():
    j = jobs("w1", "w2", "r1", "r2", "r3")
    ranked = list(j.values())
    running = {j["r1"], j["r2"], j["r3"]}
    # Top 4 = w1 w2 r1 r2: two enter, one slot is free, so one (r3, the last) goes.
    assert displacements(ranked, running, {j["w1"], j["w2"]}, slots=4) == [j["r3"]]


def test_jobs_that_cannot_be_admitted_displace_nobody():
    j = jobs("blocked", "r")
    # "blocked" is live but neither running nor admissible (e.g. waits for a grammar).
    assert displacements([j["blocked"], j["r"]], {j["r"]}, set(), slots=1) == []


def test_displacements_keep_the_best_ranked_jobs_running(seed):
    """Random states: after preempting, the best ``slots`` candidates all fit, minimally."""
    rng = random.Random(seed)
    for _ in range(200):
        n = rng.randint(1, 12)
        j = list(jobs(*[f"j{i}" for i in range(n)]).values())
        ranked = rng.sample(j, n)
        slots = rng.randint(1, 6)
        running = set(rng.sample(j, rng.randint(0, min(n, slots))))
        waiting = {x for x in j if x not in running and rng.random() < 0.7}
        victims = displacements(ranked, running, waiting, slots)
        assert len(victims) == len(set(victims)) and set(victims) <= running
        kept = running - set(victims)
        candidates = [x for x in ranked if x in running or x in waiting]
        top = candidates[:slots]
        admitted = [x for x in candidates if x in waiting][: slots - len(kept)]
        assert set(top) <= kept | set(admitted), "a top-ranked job does not run"
        entering = sum(1 for x in top if x not in running)
        assert len(victims) == max(0, entering - (slots - len(running)))
        # Victims are the lowest-ranked, lowest first.
        assert victims == sorted(victims, key=ranked.index, reverse=True)


def test_negative_slots_are_refused():
    with pytest.raises(ValueError, match="slots must be >= 0"):
        displacements([], set(), set(), slots=-1)


# ---- fallback scoring -------------------------------------------------------------------
def reqs(*specs: tuple[str, str | None, int]) -> list[Request]:
    return [Request(id=i, prompt=p, prompt_tokens=n) for i, p, n in specs]


class Recording:
    """A primary scorer that scores by prompt text length and fails where told to."""

    def __init__(self, fail_on=(), nan_on=()):
        self.calls: list[list[str]] = []
        self.fail_on, self.nan_on = set(fail_on), set(nan_on)

    def __call__(self, requests):
        self.calls.append([r.id for r in requests])
        if any(r.id in self.fail_on for r in requests):
            raise RuntimeError("ranker broke")
        return [math.nan if r.id in self.nan_on else float(len(r.prompt)) for r in requests]


def test_fallback_scorer_passes_good_scores_through_in_one_call():
    primary = Recording()
    scorer = FallbackScorer(primary, log=lambda m: None)
    batch = reqs(("a", "xx", 3), ("b", "xxxxx", 9))
    assert scorer(batch) == [2.0, 5.0]
    assert primary.calls == [["a", "b"]] and scorer.fallbacks == 0


def test_requests_without_text_are_ranked_by_prompt_length_on_the_rankers_scale():
    primary, logs = Recording(), []
    scorer = FallbackScorer(primary, log=logs.append)
    batch = reqs(("a", "xx", 3), ("b", "xxxx", 7), ("c", None, 1), ("d", "xxxxxx", 15))
    out = scorer(batch)
    assert primary.calls == [["a", "b", "d"]]
    assert out[:2] == [2.0, 4.0] and out[3] == 6.0
    # c's prompt-length value, standardized against all four, mapped onto the primary's
    # mean 4 and sample std 2.
    f = [-math.log1p(n) for n in (3, 7, 1, 15)]
    mean = sum(f) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in f) / 3)
    assert out[2] == pytest.approx(4.0 + 2.0 * (f[2] - mean) / std, rel=1e-12)
    assert scorer.fallbacks == 1 and "['c']" in logs[0]


def test_a_failing_batch_is_retried_one_by_one_and_only_the_bad_request_falls_back():
    primary, logs = Recording(fail_on={"b"}), []
    scorer = FallbackScorer(primary, log=logs.append)
    out = scorer(reqs(("a", "xx", 3), ("b", "xxx", 3), ("c", "xxxx", 3)))
    assert primary.calls == [["a", "b", "c"], ["a"], ["b"], ["c"]]
    assert out[0] == 2.0 and out[2] == 4.0 and math.isfinite(out[1])
    assert scorer.fallbacks == 1
    assert any("'b'" in m and "ranker broke" in m for m in logs)


def test_non_finite_scores_fall_back():
    scorer = FallbackScorer(Recording(nan_on={"a"}), log=lambda m: None)
    out = scorer(reqs(("a", "xx", 3), ("b", "xxx", 3)))
    assert math.isfinite(out[0]) and out[1] == 3.0 and scorer.fallbacks == 1


def test_a_scorer_giving_the_wrong_count_is_a_failure():
    scorer = FallbackScorer(lambda rs: [1.0], log=lambda m: None)
    out = scorer(reqs(("a", "xx", 3), ("b", "xxx", 4)))
    # Retried one by one, each alone gets its one score.
    assert out == [1.0, 1.0] and scorer.fallbacks == 0


def test_ltr_with_a_fallback_scorer_ranks_every_job():
    live = LiveJobs(LTR(scorer=FallbackScorer(Recording(fail_on={"x"}), log=lambda m: None)))
    for r in reqs(("long", "x" * 9, 5), ("short", "x", 5), ("x", "xxxx", 2)):
        live.add(r)
    order = [job.id for job in live.rank()]
    # Scores 9 and 1; x, unscorable, has the shortest prompt of the three, so its
    # standardized fallback lands above the best ranked one.
    assert order == ["x", "long", "short"]
    assert all(math.isfinite(job.score) for job in live)


def test_prompt_length_scores_rank_shorter_prompts_ahead():
    s = prompt_length_scores(reqs(("a", None, 10), ("b", None, 100), ("c", None, 0)))
    assert s[2] > s[0] > s[1] and s[2] == 0.0


# ---- engine settings --------------------------------------------------------------------
def test_settings_default_to_ltr_with_the_papers_guard():
    cfg = EngineSchedulerConfig.from_env({})
    assert (cfg.policy, cfg.ranker, cfg.starvation) == ("ltr-starvation", "default", (200, 10))
    assert EngineSchedulerConfig.from_env({"HASTEN_POLICY": "ltr"}).starvation is None


def test_settings_read_every_variable_and_round_trip():
    env = {
        "HASTEN_POLICY": "mlfq",
        "HASTEN_RANKER": "prompt-length",
        "HASTEN_STARVATION": "50,5",
        "HASTEN_RANKER_DEVICE": "cpu",
    }
    cfg = EngineSchedulerConfig.from_env(env)
    assert (cfg.policy, cfg.starvation, cfg.ranker_device) == ("mlfq", (50, 5), "cpu")
    assert EngineSchedulerConfig.from_env(cfg.to_env()) == cfg
    off = EngineSchedulerConfig(policy="ltr-starvation", starvation=None)
    assert EngineSchedulerConfig.from_env(off.to_env()).starvation is None


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"HASTEN_POLICY": "sjf-ish"}, r"policy 'sjf-ish' .*choose one of \['ltr'"),
        ({"HASTEN_RANKER": "ranker.bin"}, r"ranker 'ranker.bin' .*\.pt"),
        ({"HASTEN_STARVATION": "200"}, r"'200' .*THRESHOLD/QUANTUM"),
        ({"HASTEN_STARVATION": "0/10"}, "threshold must be an int >= 1"),
    ],
)
def test_bad_settings_are_refused_with_the_valid_choices(env, match):
    with pytest.raises(ValueError, match=match):
        EngineSchedulerConfig.from_env(env)


def test_build_policy_gives_each_policy_and_its_guard():
    assert isinstance(EngineSchedulerConfig(policy="fcfs").build_policy(), FCFS)
    mlfq = EngineSchedulerConfig(policy="mlfq", starvation=(9, 3)).build_policy()
    assert isinstance(mlfq, MLFQ) and (mlfq.starvation.threshold, mlfq.starvation.quantum) == (
        9,
        3,
    )
    ltr = EngineSchedulerConfig(policy="ltr-starvation", ranker="prompt-length").build_policy()
    assert isinstance(ltr, LTR) and ltr.scorer is prompt_length_scores
    assert ltr.starvation.threshold == 200
    assert parse_starvation("off") is None


# ---- prompt text ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_prompt_text_cuts_the_chat_template_off_again(tokenizer):
    text = PromptText(tokenizer)
    message = "Write a short poem about queues.\nTwo lines, please."
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=True
    )
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    assert text.prefix.startswith("<|im_start|>system") and text.suffix.endswith("assistant\n")
    assert text(ids) == message


def test_prompt_text_of_plain_and_special_only_prompts(tokenizer):
    text = PromptText(tokenizer)
    assert text(tokenizer.encode("hello world")) == "hello world"
    assert text([tokenizer.bos_token_id, tokenizer.eos_token_id]) == ""
