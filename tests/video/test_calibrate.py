"""The mask search: selection rules, errors against float64, round trip, resume, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import hasten.video.calibrate as cal
from hasten.attn import Dense, SlidingTile
from hasten.cli import main
from hasten.video import DenseStrategy, enable_sparse_attention, load_strategy
from hasten.video.calibrate import CalibrationConfig, calibrate, select
from hasten.video.tiny import pipeline_inputs, tiny_pipeline, tiny_transformer
from tests.video.oracle import oracle

CANVAS, TILE = (3, 4, 6), (1, 2, 2)  # a 3x2x3 tile grid
CANDIDATES = ((1, 1, 1), (3, 1, 1), (1, 2, 1), (1, 1, 3), (3, 2, 3))  # the last is full


def _config(**kw):
    kw = {"candidates": CANDIDATES, "steps": 3, "dense_steps": 1, "prompts": 2, "tile": TILE} | kw
    return CalibrationConfig(**kw)


def _setup(model="hunyuanvideo", seed=0):
    tr = tiny_transformer(model, seed=seed)
    pipe = tiny_pipeline(model, tr)
    pipe.set_progress_bar_config(disable=True)

    def run(i, **kw):
        with torch.no_grad():
            return pipe(**pipeline_inputs(model, tr, CANVAS, steps=3, seed=i, text_length=5), **kw)

    return tr, run


def test_select_without_budget_is_the_argmin_over_sparse_windows():
    sparsity = [0.5, 0.8, 0.0]  # the last keeps everything: never picked without a budget
    errors = torch.tensor([[0.2, 0.1], [0.1, 0.3], [0.0, 0.0]]).T.reshape(1, 1, 2, 3)
    errors = errors.movedim(-1, -2)  # [steps, layers, candidates, heads]
    assert select(errors, sparsity, steps=1).tolist() == [[[1, 0]]]
    with pytest.raises(ValueError, match="every candidate window covers the whole tile grid"):
        select(errors[:, :, 2:], [0.0], steps=1)


def test_select_with_budget_takes_the_least_error_for_the_sparsity():
    # 2 steps (1 dense), 2 heads; candidates at sparsity 0.6, 0.9 and full.
    sparsity = [0.6, 0.9, 0.0]
    errors = torch.tensor([[1.0, 2.0, 0.0], [1.0, 5.0, 0.0]]).T[None, None]  # [1,1,3,2]
    # 0.3 overall needs 1.2 of 4 entries' sparsity: both heads at 0.6 (error 2) is cheapest.
    assert select(errors, sparsity, steps=2, budget=0.3).tolist() == [[[0, 0]]]
    # 0.45 needs 1.8: only (0.9, 0.9) reaches it.
    assert select(errors, sparsity, steps=2, budget=0.45).tolist() == [[[1, 1]]]
    with pytest.raises(ValueError, match=r"budget 0.500 is out of reach: .* at most 0.450"):
        select(errors, sparsity, steps=2, budget=0.5)


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"dense_steps must be in 0\.\.steps-1"):
        _config(dense_steps=3)
    with pytest.raises(ValueError, match="budget is a sparsity in"):
        _config(budget=1.5)
    with pytest.raises(ValueError, match=r"3 of 4 steps dense \(at most 0.250\)"):
        _config(steps=4, dense_steps=3, budget=0.3)
    with pytest.raises(ValueError, match="repeat a window"):
        _config(candidates=((1, 1, 1), (1, 1, 1)))


def test_errors_match_float64_and_the_strategy_round_trips(tmp_path, seed):
    tr, run = _setup(seed=seed)
    result = calibrate(tr, run, _config(), progress=False)
    assert result.errors.shape == (2, 2, len(CANDIDATES), 2)  # steps 1-2, 2 layers, 2 heads
    assert torch.all(result.errors[:, :, -1] == 0)  # the full window is dense attention
    assert torch.all(result.errors[:, :, :-1] > 0)

    # One (step, layer) recomputed in float64 from the same dense trajectories.
    captured = []
    runtime = enable_sparse_attention(tr, DenseStrategy(tile=TILE))
    runtime.recorder = lambda step, layer, q, k, v, out, layout, lens: (
        captured.append((q, k, v, layout, lens)) if (step, layer) == (1, 0) else None
    )
    for i in range(2):
        run(i)
    ref = torch.zeros(len(CANDIDATES), 2, dtype=torch.float64)
    for q, k, v, layout, lens in captured:
        dense = oracle(q, k, v, layout, Dense(), lens)
        for c, w in enumerate(CANDIDATES):
            diff = oracle(q, k, v, layout, SlidingTile(w), lens) - dense
            ref[c] += (diff**2).mean(dim=(0, 1, 3)) / len(captured)
    assert torch.allclose(result.errors[0, 0], ref, rtol=2e-3, atol=1e-9)

    # Every head took its lowest-error sparse candidate.
    best = result.errors[:, :, :-1].argmin(dim=2)
    assert torch.equal(result.choice, best)
    paths = result.write(tmp_path)
    strategy = load_strategy(paths["strategy"])
    assert strategy == result.strategy
    p = strategy.pattern(2, 1)
    windows = list(p.windows) * (2 if p.heads is None else 1)  # one window stands for all heads
    assert windows == [CANDIDATES[i] for i in best[1, 1].tolist()]
    assert strategy.pattern(0, 0) == Dense()
    report = json.loads(paths["report"].read_text())
    assert len(report["sparsity_per_layer"]) == 2
    assert [c["chosen"] for c in report["candidates"]] == torch.bincount(
        best.reshape(-1), minlength=len(CANDIDATES)
    ).tolist()
    assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The calibrated strategy runs in the model it was made for.
    enable_sparse_attention(tr, strategy)
    run(0)


def test_budget_reaches_its_sparsity(seed):
    tr, run = _setup(model="wan", seed=seed)
    cands = CANDIDATES[:-1]  # the full window joins by itself under a budget
    result = calibrate(tr, run, _config(candidates=cands, budget=0.3), progress=False)
    assert result.candidates[-1] == (3, 2, 3)
    assert 0.3 <= result.sparsity < result.candidate_sparsity[0]


class _Stop(Exception):
    pass


def test_interrupted_search_resumes_with_its_finished_steps(tmp_path, monkeypatch, seed):
    tr, run = _setup(seed=seed)
    whole = calibrate(tr, run, _config(), progress=False)
    ck = tmp_path / "ck.pt"

    def cut(i):
        if i == 0:
            return run(i)

        def stop(pipe, step, t, kw):
            if step == 1:  # after the first searched step of the second prompt
                raise _Stop
            return kw

        return run(i, callback_on_step_end=stop)

    with pytest.raises(_Stop):
        calibrate(tr, cut, _config(), checkpoint=ck, progress=False)
    saved = torch.load(ck, weights_only=True)["done"]
    assert {p: sorted(s) for p, s in saved.items()} == {0: [1, 2], 1: [1]}

    evaluated = []
    real = cal.video_attention
    monkeypatch.setattr(
        cal, "video_attention", lambda *a, **k: evaluated.append(1) or real(*a, **k)
    )
    resumed = calibrate(tr, run, _config(), checkpoint=ck, progress=False)
    assert len(evaluated) == 1 * 2 * len(CANDIDATES)  # only step 2 of prompt 1, 2 layers
    assert torch.allclose(resumed.errors, whole.errors, rtol=1e-6, atol=0)
    assert resumed.strategy == whole.strategy
    with pytest.raises(ValueError, match="made with other settings"):
        calibrate(tr, run, _config(dense_steps=0), checkpoint=ck, progress=False)


def test_cli_writes_strategy_report_and_heatmap(tmp_path, capsys):
    args = ["calibrate", "--canvas", "3x4x6", "--tile", "1x2x2", "--candidates"]
    args += ["1x1x1,3x1x1,1x2x1", "--steps", "3", "--dense-steps", "1", "--prompts", "1"]
    args += ["--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "overall sparsity" in out and "wrote heatmap" in out
    for name in ("strategy.json", "report.json", "heatmap.png", "checkpoint.pt"):
        assert (tmp_path / name).is_file()
    assert main(["video", "check", str(tmp_path / "strategy.json")]) == 0
    assert main(["video", "check", str(tmp_path / "strategy.json"), "--layers", "60"]) == 2
    assert (
        main(["video", "check", str(tmp_path / "strategy.json"), "--layers", "60", "--heads", "24"])
        == 2
    )
    assert "60 attention layers x 24 heads" in capsys.readouterr().err


def test_cli_presets_and_schema(capsys):
    assert main(["video", "presets"]) == 0
    assert "hunyuanvideo-720p-117f " in capsys.readouterr().out
    assert main(["video", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["properties"]["format"]["const"]
