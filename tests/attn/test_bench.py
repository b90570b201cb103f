"""Benchmark plumbing: exact FLOP counts, the CLI commands and the benchmark script on CPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch

from hasten.attn import Dense, SlidingTile, VideoLayout, backend_names, bench
from hasten.attn.backends import base
from hasten.attn.backends.reference import ReferenceBackend
from hasten.attn.bench import (
    PEAK_TFLOPS,
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


@pytest.fixture(scope="module")
def script():
    """benchmarks/attention.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        "attention_benchmark", ROOT / "benchmarks" / "attention.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _not_failed(rows: list[dict]) -> bool:
    """Every row ran or was skipped for a stated reason (e.g. triton off the interpreter)."""
    return all(r["status"] == "ok" or (r["status"] == "skipped" and r["note"]) for r in rows)


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


def test_backward_flops_are_two_and_a_half_forwards():
    layout = VideoLayout((6, 4, 4), (2, 2, 2))
    for pattern in (Dense(), SlidingTile((1, 1, 1))):
        fwd = kept_flops(layout, pattern, 2, 3, 16)
        assert kept_flops(layout, pattern, 2, 3, 16, mode="bwd") * 2 == fwd * 5
    assert dense_flops(layout, 1, 1, 1, mode="bwd") == 10 * 96**2
    with pytest.raises(ValueError, match="fwd"):
        kept_flops(layout, Dense(), 1, 1, 1, mode="fwd+bwd")


def test_case_validates_at_construction():
    with pytest.raises(ValueError, match="dtype"):
        BenchCase("x", (4, 4, 4), (2, 2, 2), dtype="fp8")
    with pytest.raises(ValueError, match="odd window"):
        BenchCase("x", (8, 8, 8), (2, 2, 2), window=(2, 2, 2))
    with pytest.raises(ValueError, match="pass_"):
        BenchCase("x", (4, 4, 4), (2, 2, 2), pass_="both")


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
    # Every other method still ran (or said why not), dense SDPA once for both windows.
    assert _not_failed([r for r in rows if r["method"] != "broken"])
    assert {r["status"] for r in rows if r["method"] in ("sdpa-math", "reference")} == {"ok"}
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
    assert _not_failed(rows) and all(r["ms"] > 0 for r in rows if r["status"] == "ok")
    assert {r["pass"] for r in rows} == {"fwd"}
    assert all(r["mfu"] is None for r in rows)  # CPU rows: no peak to compare with
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


def test_bench_command_backward(tmp_path):
    path = tmp_path / "bench.json"
    argv = "attn bench --device cpu --canvas 6x4x4 --tile 2x2x2 --heads 2 --head-dim 8"
    argv = [*argv.split(), "--windows", "1x1x1", "--passes", "bwd", "--quick"]
    assert main([*argv, "--methods", "sdpa-math,reference", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert [(r["method"], r["pass"], r["status"]) for r in rows] == [
        ("sdpa-math", "bwd", "ok"),
        ("reference", "bwd", "ok"),
    ]
    assert rows[1]["kept_flops"] == 10 * 1 * 2 * 8 * 768


# ---- backward -------------------------------------------------------------------------
def test_backward_times_only_the_backward_of_one_forward():
    q = torch.randn(4, requires_grad=True)
    k = torch.randn(4, requires_grad=True)
    forwards = []

    def forward():
        forwards.append(1)
        return q * k

    fn = bench._timed_fn(forward, (q, k), "bwd")
    (dq1, dk1), (dq2, dk2) = fn(), fn()  # the graph is kept between calls
    assert len(forwards) == 1
    # dq = grad_out * k with a random (never zero) grad_out, the same on every call.
    assert torch.equal(dq1, dq2) and torch.equal(dk1, dk2)
    assert (dq1 != 0).all()
    assert torch.allclose(dq1 / k, dk1 / q)
    assert bench._timed_fn(forward, (q, k), "fwd") is forward


def test_backward_rows_on_cpu():
    case = BenchCase(
        "t", (4, 4, 4), (2, 2, 2), heads=2, head_dim=16, dtype="fp32", window=(1, 1, 1)
    )
    fwd, bwd = case, dataclasses.replace(case, pass_="bwd")
    rows = run_cases([fwd, bwd], "cpu", TINY, env={}, methods=["sdpa-math", "reference", "flex"])
    got = {(r["pass"], r["method"]): r for r in rows}
    assert got["bwd", "sdpa-math"]["status"] == "ok"  # dense runs again for the new pass
    assert got["bwd", "reference"]["status"] == "ok"
    assert got["bwd", "flex"]["status"] == "skipped"
    assert "no backward" in got["bwd", "flex"]["note"]
    for method in ("sdpa-math", "reference"):
        assert got["bwd", method]["kept_flops"] * 2 == got["fwd", method]["kept_flops"] * 5
    assert "bwd" in format_table(rows)


def test_dense_backward_refusal_is_a_skipped_row(monkeypatch):
    class Refuses(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("cuDNN Frontend error: no execution plan for this shape")

    monkeypatch.setattr(bench, "_dense_fn", lambda q, k, v, backend: lambda: Refuses.apply(q))
    case = BenchCase("t", (4, 4, 4), (2, 2, 2), heads=1, head_dim=8, dtype="fp32", pass_="bwd")
    (row,) = run_cases([case], "cpu", TINY, env={}, methods=["sdpa-math"])
    assert row["status"] == "skipped"
    assert "backward refused" in row["note"] and "no execution plan" in row["note"]


# ---- MFU ------------------------------------------------------------------------------
def test_mfu_on_cuda_rows_only():
    def row_on(device: str, dtype: str = "bf16") -> dict:
        # 4 TFLOP of kept work (of 8 dense) in 2 ms: 2000 TFLOP/s.
        fields = {"case": "c", "window": "full", "pass": "fwd", "dtype": dtype, **_SHAPE}
        return bench._row(fields, "m", "ok", "", 2.0, 0.1, 4e12, 8e12, torch.device(device))

    assert PEAK_TFLOPS == 989.0
    row = row_on("cuda")
    assert row["tflops_kept"] == pytest.approx(2000.0)
    assert row["mfu"] == pytest.approx(2000.0 / PEAK_TFLOPS)
    assert row_on("cpu")["mfu"] is None
    assert row_on("cuda", "fp32")["mfu"] is None  # no tensor-core peak to compare with
    table = format_table([row])
    assert "MFU" in table and "202.2%" in table


_SHAPE = {"canvas": "", "tile": "", "text_tokens": 0, "heads": 1, "head_dim": 1, "batch": 1}


# ---- the benchmark script -------------------------------------------------------------
def test_benchmark_script_quick_cpu(tmp_path):
    # Without the Triton interpreter (conftest turns it on) triton rows say skipped: fast.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
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
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("attention-*-quick.json")
    rows = json.loads(path.read_text())["rows"]
    assert rows and _not_failed(rows)
    assert {r["pass"] for r in rows} == {"fwd", "bwd"}
    ran = {(r["pass"], r["method"]) for r in rows if r["status"] == "ok"}
    assert {("fwd", "flex"), ("bwd", "sdpa-math"), ("bwd", "reference")} <= ran
    assert proc.stdout.rstrip().splitlines()[-1].split()[0] == rows[-1]["case"]


def test_benchmark_script_subsets(script, tmp_path, capsys):
    argv = ["--quick", "--device", "cpu", "--out", str(tmp_path), "--passes", "bwd"]
    argv += ["--only", "tiny", "--methods", "sdpa-math,reference,flex"]
    assert script.main(argv) == 0
    (path,) = tmp_path.glob("attention-*-quick.json")
    rows = json.loads(path.read_text())["rows"]
    assert {(r["case"], r["pass"]) for r in rows} == {("cpu-tiny-6x8x12", "bwd")}
    assert [r["method"] for r in rows] == ["sdpa-math", "reference", "flex"]
    with pytest.raises(SystemExit):
        script.main([*argv[:5], "--only", "no-such-case"])
    assert "no case left" in capsys.readouterr().err


def test_gpu_plan_fits_the_time_budget(script):
    cases = script.plan("cuda", quick=False)
    assert {(c.name, c.pass_) for c in cases} >= {
        ("hunyuanvideo-720p-117f", "fwd"),
        ("wan-720p-81f", "bwd"),
        ("fastvideo-18x48x80", "fwd"),
    }
    hv_bwd = [c.window for c in cases if c.pass_ == "bwd" and c.name.startswith("hunyuan")]
    assert hv_bwd == [(3, 3, 3), "full"]
    # The printed estimate (a rough model of an H100) stays under ~6 minutes.
    assert script.estimate_s(cases, Timing(), None) < 6 * 60
    assert [c.pass_ for c in script.plan("cuda", False, ["fwd"], ["wan"])] == ["fwd"] * 4


# ---- fastvideo-kernel's Triton kernel, stood in for on CPU ----------------------------
def _fastvideo_case(**kw) -> BenchCase:
    base = {"heads": 2, "head_dim": 16, "dtype": "fp32", "window": (1, 1, 1)}
    methods = ("sdpa-math", "reference", "fastvideo-triton")
    return BenchCase("fv", (6, 8, 16), (6, 8, 8), methods=methods, **{**base, **kw})


def test_fastvideo_missing_is_a_skipped_row(script, tmp_path):
    plain = BenchCase("plain", (6, 8, 16), (6, 8, 8), heads=1, head_dim=16, dtype="fp32")
    for where, why in ((None, "--fastvideo-dir"), (tmp_path, "st_attn_triton.py not found")):
        rows = run_cases(
            [_fastvideo_case(), plain],
            "cpu",
            TINY,
            env={},
            methods=["sdpa-math", "fastvideo-triton"],
            external=[script.FastVideoTriton(where)],
        )
        fv = [r for r in rows if r["method"] == "fastvideo-triton"]
        # Only the case that names it gets a row.
        assert [(r["case"], r["status"]) for r in fv] == [("fv", "skipped")]
        assert why in fv[0]["note"]
        assert {r["status"] for r in rows if r["method"] == "sdpa-math"} == {"ok"}


def test_fastvideo_refuses_what_its_kernel_cannot_take(script, tmp_path):
    (tmp_path / "st_attn_triton.py").write_text("")
    fv = script.FastVideoTriton(tmp_path, devices=("cpu",))
    q = torch.empty(0)
    case = BenchCase("x", (18, 48, 80), (6, 8, 8), window=(3, 3, 3))
    assert fv.unavailable(case, q) is None
    assert "forward only" in fv.unavailable(dataclasses.replace(case, pass_="bwd"), q)
    assert "canvases" in fv.unavailable(dataclasses.replace(case, canvas=(21, 45, 80)), q)
    assert "STA windows" in fv.unavailable(dataclasses.replace(case, window="full"), q)
    assert "no text" in fv.unavailable(dataclasses.replace(case, text_tokens=16), q)
    hv = BenchCase("hv", (30, 48, 80), (6, 8, 8), window=(3, 3, 3))
    assert "text tokens" in fv.unavailable(hv, q)
    assert fv.unavailable(dataclasses.replace(hv, text_tokens=256), q) is None
    assert "runs on cuda" in script.FastVideoTriton(tmp_path).unavailable(case, q)


# A stand-in for st_attn_triton.py: its entry point and an autotuner holding 72 configs.
_STAND_IN = """
from types import SimpleNamespace
from hasten.attn import SlidingTile, VideoLayout, sparse_attention

triton_sta_kernel = SimpleNamespace(cache={}, configs=[
    SimpleNamespace(kwargs={"BLOCK_Q": bq, "BLOCK_KV": bkv}, num_warps=w, num_stages=s)
    for bq in (32, 64, 128) for bkv in (32, 64, 128) for s in (1, 2, 3, 4) for w in (4, 8)
])
calls = []

def sliding_tile_attention_triton(q, k, v, window_size, text_length, has_text=True,
                                  dit_seq_shape="30x48x80"):
    calls.append((len(window_size), text_length, has_text, dit_seq_shape))
    canvas = tuple(int(x) for x in dit_seq_shape.split("x"))
    layout = VideoLayout(canvas, (6, 8, 8))
    return sparse_attention(q, k, v, layout, SlidingTile(window_size[0]), backend="reference")
"""


def test_fastvideo_runs_and_is_checked_against_flex(script, tmp_path):
    (tmp_path / "st_attn_triton.py").write_text(_STAND_IN)
    fv = script.FastVideoTriton(tmp_path, devices=("cpu",), shapes={(6, 8, 16): ("6x8x16", False)})
    rows = run_cases([_fastvideo_case()], "cpu", TINY, env={}, external=[fv])
    assert [r["method"] for r in rows] == ["sdpa-math", "reference", "fastvideo-triton"]
    row = rows[-1]
    assert row["status"] == "ok", row["note"]
    assert row["kept_flops"] == rows[1]["kept_flops"]
    assert "rel err vs flex" in row["note"] and "MISMATCH" not in row["note"]
    assert "limited to 4 of its 72 configs" in row["note"]
    assert "128/128/8/3" in row["note"]
    module = fv._load()  # loaded once
    assert set(module.calls) == {(2, 0, False, "6x8x16")}
    kept = [script._config_key(c) for c in module.triton_sta_kernel.configs]
    assert kept == list(script.FASTVIDEO_CONFIGS)


def test_limit_autotune_on_a_real_triton_autotuner(script):
    triton = pytest.importorskip("triton")

    def kernel(X, BLOCK_Q: triton.language.constexpr, BLOCK_KV: triton.language.constexpr):
        pass

    configs = [
        triton.Config({"BLOCK_Q": bq, "BLOCK_KV": bkv}, num_stages=s, num_warps=w)
        for bq in (32, 64, 128)
        for bkv in (32, 64, 128)
        for s in (1, 2, 3, 4)
        for w in (4, 8)
    ]
    tuner = triton.autotune(configs=configs, key=["X"])(triton.jit(kernel))
    note = script.limit_autotune(tuner, script.FASTVIDEO_CONFIGS)
    assert [script._config_key(c) for c in tuner.configs] == list(script.FASTVIDEO_CONFIGS)
    assert all(c in configs for c in tuner.configs)  # the shipped objects, not copies
    assert "4 of its 72" in note
    # None shipped that match: built instead; nothing to limit: left alone and said so.
    other = triton.autotune(configs=configs[:2], key=["X"])(triton.jit(kernel))
    script.limit_autotune(other, script.FASTVIDEO_CONFIGS)
    assert [script._config_key(c) for c in other.configs] == list(script.FASTVIDEO_CONFIGS)
    assert "left as shipped" in script.limit_autotune(SimpleNamespace(), ((64, 64, 4, 3),))


@pytest.mark.gpu
def test_bench_runs_on_cuda_small():
    case = BenchCase("g", (6, 8, 8), (2, 4, 4), heads=2, head_dim=64, window=(1, 1, 1))
    rows = {r["method"]: r for r in run_cases([case], "cuda", TINY)}
    assert {"sdpa-flash", "sdpa-cudnn", "flex", "triton"} <= rows.keys()
    assert rows["flex"]["status"] == "ok", rows["flex"]["note"]
    assert rows["flex"]["card"] == torch.cuda.get_device_name()
    assert rows["flex"]["mfu"] == pytest.approx(rows["flex"]["tflops_kept"] / PEAK_TFLOPS)


@pytest.mark.gpu
def test_bench_backward_on_cuda_small():
    case = BenchCase("g", (6, 8, 8), (2, 4, 4), heads=2, head_dim=64, window=(1, 1, 1), pass_="bwd")
    rows = {r["method"]: r for r in run_cases([case], "cuda", TINY)}
    for method in ("sdpa-flash", "flex", "triton"):
        assert rows[method]["status"] == "ok", rows[method]["note"]
        assert rows[method]["pass"] == "bwd"
    # cuDNN's backward may refuse a shape: then it says so, it does not fail the run.
    assert rows["sdpa-cudnn"]["status"] in ("ok", "skipped")
