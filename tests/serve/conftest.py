"""Fixtures for the serving tests: a tiny model checkpoint that a real vLLM engine serves."""

from __future__ import annotations

import pytest

from tests.serve.tiny_llm import make_tiny_llm


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """Path of a 2-layer random Llama checkpoint with a local tokenizer (made once a session)."""
    return make_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))
