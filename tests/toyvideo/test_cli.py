"""``hasten generate`` writes a real video; ``hasten distill`` runs all stages and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hasten.cli import main
from hasten.toyvideo.checkpoint import DATA, PACKAGED, load_model
from hasten.toyvideo.loop import Budget, Checkpointed, run_loop

from .factories import tiny_checkpoint


def _gif_frames(path):
    with Image.open(path) as im:
        assert im.format == "GIF"
        return im.n_frames, im.size


def test_generate_writes_a_gif_and_prints_timings(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "clip.gif"
    rc = main(["generate", "two red squares moving left", "--model", str(ckpt), "-o", str(out)])
    assert rc == 0
    assert _gif_frames(out) == (8, (32 * 4, 32 * 4))
    text = capsys.readouterr().out
    assert "generate" in text and "ms/step" in text and "steps      2" in text


@pytest.mark.parametrize("attention", ["dense", "sta", "frame-tiles"])
def test_generate_attention_choices_and_samples(tmp_path, attention):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / f"{attention}.gif"
    argv = [
        "generate",
        "one blue circle moving up",
        "--model",
        str(ckpt),
        "--attention",
        attention,
        "--steps",
        "1",
        "--samples",
        "2",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    assert _gif_frames(out) == (8, (2 * 32 * 4, 32 * 4))  # two clips side by side


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "two purple squares moving left"], "purple"),
        (["generate", "two red squares moving left", "--model", "org/some-pipeline"], "diffusers"),
        (["generate", "two red squares moving left", "--attention", "swa"], "strategy"),
        (["generate", "two red squares moving left", "-o", "x.avi"], ".gif"),
    ],
)
def test_generate_rejects_bad_input_clearly(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "-o" in argv or "--attention" in argv:
        argv = [*argv, "--model", str(tiny_checkpoint(tmp_path / "tiny.pt"))]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not (DATA / PACKAGED["sparse-student"]).exists(), reason="no packaged weights")
def test_the_packaged_default_generates_16_frames(tmp_path):
    out = tmp_path / "default.gif"
    assert main(["generate", "two red squares moving left", "-o", str(out)]) == 0
    assert _gif_frames(out) == (16, (64 * 4, 64 * 4))


def test_distill_runs_three_stages_and_resumes(tmp_path, capsys):
    teacher = tiny_checkpoint(tmp_path / "teacher.pt", steps=4)
    out = tmp_path / "run"
    argv = [
        "distill",
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--steps",
        "2",
        "--teacher-steps",
        "4",
        "--stage1-steps",
        "3",
        "--stage3-steps",
        "2",
        "--batch",
        "2",
        "--checkpoint-every",
        "1",
        "--device",
        "cpu",
        "--threshold",
        "10",
    ]
    assert main(argv) == 0
    for name in ("student.pt", "strategy.json", "sparse-student.pt", "losses.png"):
        assert (out / name).exists(), name
    losses = json.loads((out / "losses.json").read_text())
    assert len(losses["stage 1 consistency"]) == 3 and len(losses["stage 3 sparse KD"]) == 2
    sparse, meta = load_model(out / "sparse-student.pt")
    assert meta["steps"] == 2 and all(p.global_frames == 0 for p in sparse.patterns)
    capsys.readouterr()
    assert main(argv) == 0  # a finished run is not redone
    assert "done before" in capsys.readouterr().out


def test_an_interrupted_loop_continues_where_it_stopped(tmp_path):
    w = torch.nn.Parameter(torch.tensor([3.0]))
    opt = torch.optim.SGD([w], lr=0.1)

    def step(i):
        loss = (w**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    ckpt = Checkpointed(tmp_path / "c.ckpt", opt=opt, w=torch.nn.ParameterList([w]))
    done, losses = run_loop("a", step, Budget(3), ckpt, every=1, log=lambda m: None)
    assert done == 3 and len(losses) == 3
    with torch.no_grad():
        w.fill_(100.0)  # a fresh process would start from scratch; the checkpoint restores
    done, losses = run_loop("a", step, Budget(5), ckpt, every=1, log=lambda m: None)
    assert done == 5 and len(losses) == 5
    assert losses[3] < losses[2]  # continued from w after step 3, not from 100
