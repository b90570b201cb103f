"""benchmarks/video_e2e.py: the smoke run writes its rows and table (tiny models, CPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("video_e2e", ROOT / "benchmarks" / "video_e2e.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["video_e2e"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_json_and_table(tmp_path, capsys):
    bench = _load()
    args = ["--quick", "--device", "cpu", "--models", "wan", "--repeats", "1"]
    args += ["--configs", "sta-333,per-head,dense,no-attention", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    data = json.loads((tmp_path / "video-e2e-cpu-quick.json").read_text())
    assert {"card", "torch", "commit", "diffusers"} <= set(data["env"])
    rows = {r["config"]: r for r in data["rows"]}
    assert data["rows"][0]["config"] == "dense"  # the baseline runs first
    assert all(r["status"] == "ok" and r["finite"] for r in rows.values())
    assert rows["dense"]["step_sparsity"] == 0.0
    # (3,3,3) on the tiny 5x3x4 tile grid keeps 3 of 5 along t and 3 of 4 along w.
    assert rows["sta-333"]["step_sparsity"] == pytest.approx(1 - (3 / 5) * (3 / 4))
    per_head = rows["per-head"]
    # Its candidates keep 12, 9 and 15 of the 60 tiles; 15 of 50 steps are dense.
    assert 0.75 <= per_head["step_sparsity"] <= 0.85
    assert 0.75 * 35 / 50 <= per_head["overall_sparsity"] <= 0.85 * 35 / 50
    assert "| tiny-wan | sta-333 |" in capsys.readouterr().out


def test_unknown_configs_are_refused(tmp_path):
    bench = _load()
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--device", "cpu", "--configs", "sta-999", "--out", str(tmp_path)])
