"""Benchmark plumbing: exact FLOP counts, the CLI commands and the benchmark script on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from hasten.attn import Dense, SlidingTile, VideoLayout, backend_names, bench
from hasten.attn.backends import base
from hasten.attn.backends.reference import ReferenceBackend
from hasten.attn.bench import (
    BenchCase,
    Timing,
    dense_flops,
    format_table,
    kept_flops,
    run_cases,
)
from hasten.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = Timing(warmup_ms=1, rep_ms=1, min_reps=1, cpu_repeats=1)


# ---- FLOPs ----------------------------------------------------------------------------
def test_dense_flops_exact():
    layout = VideoLayout((4, 4, 8), (2, 2, 2))  # S = 128
    want = 4 * 2 * 3 * 16 * 128**2
    assert dense_flops(layout, 2, 3, 16) == want
    assert kept_flops(layout, Dense(), 2, 3, 16) == want


def test_sliding_tile_flops_by_hand():
    # Grid 3x2x2 of 8-token tiles. Window (1,1,1): each tile keeps only itself,
    # 12 tiles x 8^2 pairs; window (1,3,3): its frame-row of 4 tiles, 12 x 4 x 8^2.
    layout = VideoLayout((6, 4, 4), (2, 2, 2))
    assert kept_flops(layout, SlidingTile((1, 1, 1)), 2, 3, 16) == 4 * 2 * 3 * 16 * 768
    assert kept_flops(layout, SlidingTile((1, 3, 3)), 1, 1, 1) == 4 * 3072


def test_text_and_ragged_flops_by_hand():
    # 8 text tokens: video queries also keep every text key, text queries keep all 104 keys.
    text = VideoLayout((6, 4, 4), (2, 2, 2), text_tokens=8)
    assert kept_flops(text, SlidingTile((1, 1, 1)), 1, 1, 1) == 4 * (768 + 96 * 8 + 8 * 104)
    # 5 frames, t-tile 2: the last tile row is one frame deep (4 tokens per tile).
    ragged = VideoLayout((5, 4, 4), (2, 2, 2))
    assert kept_flops(ragged, SlidingTile((1, 1, 1)), 1, 1, 1) == 4 * (8 * 8**2 + 4 * 4**2)


def test_per_head_flops_sum_over_heads():
    layout = VideoLayout((6, 4, 4), (2, 2, 2))
    pattern = SlidingTile([(1, 1, 1), (1, 3, 3)])
    assert kept_flops(layout, pattern, 1, 2, 1) == 4 * (768 + 3072)
    with pytest.raises(ValueError, match="per-head"):
        kept_flops(layout, pattern, 1, 3, 1)


def test_backward_not_counted_yet():
    with pytest.raises(ValueError, match="fwd"):
        kept_flops(VideoLayout((2, 2, 2), (2, 2, 2)), Dense(), 1, 1, 1, mode="bwd")


def test_case_validates_at_construction():
    with pytest.raises(ValueError, match="dtype"):
        BenchCase("x", (4, 4, 4), (2, 2, 2), dtype="fp8")
    with pytest.raises(ValueError, match="odd window"):
        BenchCase("x", (8, 8, 8), (2, 2, 2), window=(2, 2, 2))


# ---- running --------------------------------------------------------------------------
def test_failing_backend_is_a_row_not_a_crash(monkeypatch):
    class Broken(ReferenceBackend):
        name = "broken"
        rank: ClassVar[dict[str, int]] = {"cpu": 99}

        def forward(self, problem):
            raise RuntimeError("kernel exploded")

    monkeypatch.setitem(base._REGISTRY, "broken", Broken())
    cases = [
        BenchCase("t", (4, 4, 4), (2, 2, 2), heads=1, head_dim=8, dtype="fp32", window=w)
        for w in ((1, 1, 1), "full")
    ]
    rows = run_cases(cases, "cpu", TINY, env={"card": "test"})
    broken = [r for r in rows if r["method"] == "broken"]
    assert [r["status"] for r in broken] == ["error", "error"]
    assert "kernel exploded" in broken[0]["note"]
    # Every other method still ran, dense SDPA once for both windows.
    assert {r["status"] for r in rows if r["method"] != "broken"} == {"ok"}
    assert [r["method"] for r in rows].count("sdpa-math") == 1
    assert all(r["card"] == "test" for r in rows)
    assert "kernel exploded" in format_table(rows)


def test_failing_case_setup_is_a_row_and_the_run_goes_on(monkeypatch):
    real = bench._inputs
    calls = iter([RuntimeError("CUDA out of memory"), None])

    def inputs(case, device):
        err = next(calls)
        if err is not None:
            raise err
        return real(case, device)

    monkeypatch.setattr(bench, "_inputs", inputs)
    cases = [BenchCase(n, (4, 4, 4), (2, 2, 2), heads=1, head_dim=8, dtype="fp32") for n in "ab"]
    rows = run_cases(cases, "cpu", TINY, env={}, methods=["reference"])
    assert [(r["case"], r["method"], r["status"]) for r in rows] == [
        ("a", "-", "error"),
        ("b", "reference", "ok"),
    ]
    assert "out of memory" in rows[0]["note"]


def test_bench_command_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = "attn bench --device cpu --canvas 6x4x4 --tile 2x2x2 --heads 2 --head-dim 8"
    argv = [*argv.split(), "--windows", "1x1x1,full", "--quick", "--json", str(path)]
    assert main(argv) == 0
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert {"card", "torch", "python", "commit", "date"} <= data["env"].keys()
    assert {r["method"] for r in rows} == {"sdpa-math", *backend_names()}
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in rows)
    sparse = next(r for r in rows if r["window"] == "1x1x1" and r["method"] == "flex")
    assert sparse["kept_flops"] == 4 * 1 * 2 * 8 * 768
    assert sparse["kept_fraction"] == pytest.approx(768 / 96**2)
    assert sparse["tflops_kept"] == pytest.approx(sparse["kept_flops"] / sparse["ms"] / 1e9)
    out = capsys.readouterr().out
    assert "TF/s kept" in out and "sdpa-math" in out


def test_backends_command_lists_every_backend(capsys):
    argv = "attn backends --device cpu --canvas 4x4x8 --tile 2x2x2 --heads 1 --head-dim 8"
    assert main(argv.split()) == 0
    out = capsys.readouterr().out
    for name in backend_names():
        assert f"{name}:" in out
    assert "picked by auto" in out


def test_benchmark_script_quick_cpu(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "attention.py"),
            "--quick",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("attention-*-quick.json")
    rows = json.loads(path.read_text())["rows"]
    assert rows and all(r["status"] == "ok" for r in rows)
    assert proc.stdout.rstrip().splitlines()[-1].split()[0] == rows[-1]["case"]


@pytest.mark.gpu
def test_bench_runs_on_cuda_small():
    case = BenchCase("g", (6, 8, 8), (2, 4, 4), heads=2, head_dim=64, window=(1, 1, 1))
    rows = {r["method"]: r for r in run_cases([case], "cuda", TINY)}
    assert {"sdpa-flash", "sdpa-cudnn", "flex"} <= rows.keys()
    assert rows["flex"]["status"] == "ok", rows["flex"]["note"]
    assert rows["flex"]["card"] == torch.cuda.get_device_name()
