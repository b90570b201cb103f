"""Shared pytest set-up: the ``gpu`` and ``slow`` markers and fresh random seeds."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in its CPU interpreter here; it must be on before they are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") and os.environ.get("CI") != "true"
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow (never in CI)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture
def seed():
    """A fresh seed per test, printed; ``HASTEN_SEED=<printed value>`` replays a failure."""
    s = int(os.environ.get("HASTEN_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"seed={s}")
    torch.manual_seed(s)
    return s
