"""Tuned-config lookup: exact card first, then a card of the same compute capability."""

from __future__ import annotations

import pytest
import torch

from hasten.attn.kernels import tuned
from hasten.attn.kernels.ops import KernelConfig


@pytest.fixture
def card(monkeypatch):
    def set_card(name: str, capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)

    return set_card


def test_exact_card_wins(card):
    card("NVIDIA H100 80GB HBM3", (9, 0))
    entry = tuned.tuned_for(torch.device("cuda"), 128)
    assert entry is tuned.TUNED[("NVIDIA H100 80GB HBM3", 128)]


def test_same_capability_borrows_the_tuned_config(card):
    # An H200 is not in the table under its own name but shares the H100's SM.
    card("NVIDIA H200 (not tuned)", (9, 0))
    entry = tuned.tuned_for(torch.device("cuda"), 128)
    assert entry is not None and entry.capability == (9, 0)
    assert tuned.config_for(torch.device("cuda"), 128) == entry.config


def test_other_capability_or_head_dim_gets_defaults(card):
    card("NVIDIA A100-SXM4-80GB", (8, 0))
    assert tuned.tuned_for(torch.device("cuda"), 128) is None
    assert tuned.config_for(torch.device("cuda"), 128) == KernelConfig()
    card("NVIDIA H100 80GB HBM3", (9, 0))
    assert tuned.config_for(torch.device("cuda"), 24) == KernelConfig()


def test_cpu_gets_defaults():
    assert tuned.config_for(torch.device("cpu"), 128) == KernelConfig()


def test_every_entry_records_its_card():
    for (card_name, _), entry in tuned.TUNED.items():
        assert entry.card == card_name and len(entry.capability) == 2
        assert entry.source.startswith("benchmarks/results/")
