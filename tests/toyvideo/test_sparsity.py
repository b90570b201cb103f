"""Stage 2: candidate families, the threshold rule and strategy files."""

from __future__ import annotations

import pytest

from hasten.attn import Dense, FrameTiles, SlidingTile
from hasten.toyvideo.consistency import student_times
from hasten.toyvideo.sampling import initial_noise
from hasten.toyvideo.sparsity import Strategy, candidates, search
from hasten.toyvideo.world import all_attributes, attributes_to_tokens

from .factories import TINY, tiny_model


def test_candidates_go_from_sparsest_to_dense():
    layout = TINY.layout
    for family in ("frame-tiles", "sta"):
        cands = candidates(family, layout)
        dens = [c.density(layout) for c in cands]
        assert dens == sorted(dens) and isinstance(cands[-1], Dense)
    assert candidates("frame-tiles", layout)[:2] == [FrameTiles(0), FrameTiles(1)]
    assert candidates("sta", layout)[0] == SlidingTile((1, 1, 1))
    with pytest.raises(ValueError, match="frame-tiles"):
        candidates("sliding", layout)


def _search(threshold, family="frame-tiles"):
    model = tiny_model()
    attrs = all_attributes()[:3]
    noise = initial_noise(3, model, 0, "cpu")
    text = attributes_to_tokens(attrs)
    return model, search(
        model, model, noise, text, student_times(2), threshold, family, log=lambda m: None
    )


def test_a_loose_threshold_takes_the_sparsest_and_zero_keeps_dense(tmp_path):
    model, loose = _search(10.0)
    assert loose.patterns == [FrameTiles(0)] * 2
    assert model.patterns == [Dense()] * 2  # the search leaves the model as it found it
    _, strict = _search(0.0)
    assert strict.patterns == [Dense()] * 2
    errs = list(strict.layers[0].errors.values())
    assert len(errs) == 3 and all(e > 0 for e in errs)


def test_the_chosen_pattern_is_the_first_under_the_threshold():
    _, s = _search(0.0)
    errors = s.layers[1].errors  # the error of every k on layer 1
    r = sorted(errors.values())[1] + 1e-9  # between the two smallest errors
    _, chosen = _search(r)
    first_under = next(name for name, e in errors.items() if e <= r)
    assert f"k={chosen.layers[1].pattern.global_frames}" in first_under
    assert chosen.layers[1].error <= r


def test_strategy_file_round_trips(tmp_path):
    _, s = _search(10.0, family="sta")
    s.save(tmp_path / "s.json")
    back = Strategy.load(tmp_path / "s.json")
    assert back == s
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a strategy file"):
        Strategy.load(tmp_path / "bad.json")
    assert back.density == sum(c.density for c in s.layers) / 2 < 1
