"""Strategies: JSON round trips, the published format, the schema, and bad files rejected."""

from __future__ import annotations

import json

import pytest

from hasten.attn import Dense, FrameTiles, SlidingTile
from hasten.video import (
    PRESETS,
    SCHEMA,
    DenseStrategy,
    FrameTileStrategy,
    PerHeadStrategy,
    SlidingTileStrategy,
    load_strategy,
)


def _entries(steps, layers, heads, window=(3, 3, 5)):
    return {
        f"{s}_{l}_{h}": list(window) for s in steps for l in range(layers) for h in range(heads)
    }


def _per_head():
    entries = _entries(range(2, 4), 3, 2)
    entries["3_1_0"] = [1, 6, 10]
    return PerHeadStrategy.from_entries(entries, canvas=(30, 48, 80))


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip(name, tmp_path):
    s = PRESETS[name]
    path = s.save(tmp_path / "s.json")
    assert load_strategy(path) == s
    assert load_strategy(name) is s


def test_per_head_round_trip_and_lookup(tmp_path):
    s = _per_head()
    assert (s.steps, s.layers, s.heads, s.dense_steps) == (4, 3, 2, 2)
    back = load_strategy(s.save(tmp_path / "s.json"))
    assert back == s
    assert back.pattern(1, 0) == Dense()  # before the first listed step: dense
    assert back.pattern(2, 1) == SlidingTile((3, 3, 5))  # one window for all heads
    assert back.pattern(3, 1) == SlidingTile([(1, 6, 10), (3, 3, 5)])
    assert back.entries()["3_1_0"] == [1, 6, 10]


def test_published_flat_map_loads(tmp_path):
    # The published mask search writes the bare "{step}_{layer}_{head}" map.
    path = tmp_path / "mask_strategy.json"
    path.write_text(json.dumps(_entries(range(1, 3), 2, 2, (5, 6, 1))))
    s = load_strategy(path)
    assert isinstance(s, PerHeadStrategy)
    assert (s.dense_steps, s.steps, s.layers, s.heads, s.tile) == (1, 3, 2, 2, (6, 8, 8))
    assert s.pattern(2, 1) == SlidingTile((5, 6, 1))


def test_fixed_and_frame_strategies():
    s = SlidingTileStrategy(window=(3, 3, 3), dense_steps=2)
    assert [s.pattern(i, 0) for i in range(3)] == [Dense(), Dense(), SlidingTile((3, 3, 3))]
    f = FrameTileStrategy(global_frames=(1, 2, 3))
    assert f.pattern(0, 2) == FrameTiles(3)
    assert DenseStrategy().pattern(7, 3) == Dense()


def test_sparsity_counts_dense_steps():
    # (3,3,3) on the 5x6x10 grid keeps 27 of 300 tiles; half the steps dense halves it.
    s = SlidingTileStrategy(window=(3, 3, 3), dense_steps=2)
    assert s.sparsity((30, 48, 80), layers=2, heads=3, steps=4) == pytest.approx(0.91 / 2)


def test_schema_accepts_what_we_write_and_rejects_what_we_reject():
    jsonschema = pytest.importorskip("jsonschema")
    for s in [*PRESETS.values(), _per_head(), FrameTileStrategy(global_frames=(1, 2))]:
        jsonschema.validate(s.to_dict(), SCHEMA)
    for bad in _BAD_DICTS.values():
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


_GOOD = _per_head().to_dict()
_BAD_DICTS = {
    "format": ({**_GOOD, "format": "sta"}, "'format' is 'sta'"),
    "kind": ({**_GOOD, "kind": "magic"}, "kind 'magic' is not one of"),
    "foreign-field": ({**_GOOD, "window": [3, 3, 3]}, r"fields \['window'\] do not belong"),
    "bad-key": (
        {**_GOOD, "windows": {**_GOOD["windows"], "2-0-0": [1, 1, 1]}},
        "bad strategy key '2-0-0'",
    ),
    "short-window": (
        {**_GOOD, "windows": {**_GOOD["windows"], "2_0_0": [3, 3]}},
        "three positive ints",
    ),
    "missing-window": (
        {k: v for k, v in SlidingTileStrategy().to_dict().items() if k != "window"},
        "needs the field 'window'",
    ),
    "null-window": ({**SlidingTileStrategy().to_dict(), "window": None}, "three ints"),
}


@pytest.mark.parametrize("case", list(_BAD_DICTS))
def test_bad_strategy_dicts_are_rejected(case):
    data, message = _BAD_DICTS[case]
    with pytest.raises((ValueError, TypeError), match=message):
        load_strategy(data)


def test_holes_and_shape_mismatch_are_rejected():
    entries = _entries(range(2, 4), 3, 2)
    del entries["3_2_1"]
    with pytest.raises(ValueError, match="'3_2_1' is missing"):
        PerHeadStrategy.from_entries(entries)
    data = {**_GOOD, "heads": 24}
    with pytest.raises(ValueError, match="the file says steps=4, layers=3, heads=24"):
        load_strategy(data)


def test_model_canvas_and_step_mismatches_are_rejected():
    s = _per_head()
    with pytest.raises(ValueError, match=r"3 layers x 2 heads but .* 60 attention layers x 24"):
        s.check_model(60, 24)
    s.check_model(3, 2)
    with pytest.raises(ValueError, match="made for canvas 30x48x80 but the model runs at 21x45x80"):
        s.layout((21, 45, 80))
    with pytest.raises(ValueError, match="step 4 is past this strategy's 4 steps"):
        s.pattern(4, 0)
    with pytest.raises(ValueError, match="global_frames lists 2 layers but"):
        FrameTileStrategy(global_frames=(1, 2)).check_model(3, 2)


def test_even_window_smaller_than_grid_is_rejected_on_the_canvas():
    s = SlidingTileStrategy(window=(2, 3, 3))
    with pytest.raises(ValueError, match="t-extent 2 is even and smaller than the tile grid"):
        s.validate_canvas((30, 48, 80), layers=1)
    s.validate_canvas((12, 48, 80), layers=1)  # 2 tiles along t: the window is full there


def test_load_strategy_errors(tmp_path):
    with pytest.raises(ValueError, match="neither a preset"):
        load_strategy("no-such-preset")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_strategy(bad)
    with pytest.raises(TypeError, match="strategy must be"):
        load_strategy(3)
