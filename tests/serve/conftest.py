"""Fixtures for the serving tests: a tiny model checkpoint that a real vLLM engine serves."""

from __future__ import annotations

import os

import pytest

from tests.serve.tiny_llm import make_tiny_llm

# vLLM's CPU worker pins itself to core 0 by default; on a machine shared with other vLLM
# processes (pinned there too) a test engine can then wait minutes for that one core.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """Path of a 2-layer random Llama checkpoint with a local tokenizer (made once a session)."""
    return make_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))
