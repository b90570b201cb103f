"""benchmarks/ulysses.py: the smoke run on 1 and 2 gloo processes writes rows and speed-ups."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[2]


def _torchrun(nproc: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    cmd += ["--standalone", str(ROOT / "benchmarks" / "ulysses.py")]
    cmd += ["--quick", "--device", "cpu", "--repeats", "1", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)


def test_one_then_two_processes_give_the_speed_up_table(tmp_path):
    for nproc in (1, 2):
        done = _torchrun(nproc, tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "ulysses-transformer-cpu-quick-w2.json").read_text())["rows"]
    assert [(r["config"], r["world_size"]) for r in rows] == [("dense", 2), ("sta-333", 2)]
    base = json.loads((tmp_path / "ulysses-transformer-cpu-quick-w1.json").read_text())["rows"]
    for r, b in zip(rows, base, strict=True):
        assert r["speedup_vs_1"] == pytest.approx(b["median_s"] / r["median_s"])
        assert r["efficiency"] == pytest.approx(r["speedup_vs_1"] / 2)
    assert "| transformer | sta-333 | 2 |" in done.stdout


def test_refuses_to_run_outside_torchrun(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ulysses.py"), "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0 and "launch with torchrun" in done.stderr
