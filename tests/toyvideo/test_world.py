"""The procedural world: determinism, captions, and motion that matches the caption."""

from __future__ import annotations

import pytest
import torch

from hasten.toyvideo.world import (
    DIRECTIONS,
    WorldConfig,
    all_attributes,
    attributes_to_tokens,
    caption,
    parse_prompt,
    render,
    sample_clips,
    tokenize,
)

SMALL = WorldConfig(frames=8, size=32, min_radius=2.5, max_radius=4, min_speed=1, max_speed=2)


def test_same_seed_same_clips_other_seed_other_clips():
    a, attrs_a = sample_clips(6, seed=3, config=SMALL)
    b, attrs_b = sample_clips(6, seed=3, config=SMALL)
    c, _ = sample_clips(6, seed=4, config=SMALL)
    assert torch.equal(a, b) and torch.equal(attrs_a, attrs_b)
    assert not torch.equal(a, c)
    assert a.shape == (6, 3, 8, 32, 32)
    assert a.min() >= -1 and a.max() <= 1


def test_every_caption_round_trips_and_tokenizes_like_the_vectorised_path():
    attrs = all_attributes()
    assert attrs.shape == (144, 4) and len({tuple(r) for r in attrs.tolist()}) == 144
    captions = [caption(a) for a in attrs]
    assert torch.equal(torch.stack([parse_prompt(c) for c in captions]), attrs)
    assert torch.equal(tokenize(captions), attributes_to_tokens(attrs))
    assert caption(torch.tensor([1, 0, 0, 0])) == "two red squares moving left"
    assert caption(torch.tensor([0, 2, 1, 3])) == "one blue circle moving down"


@pytest.mark.parametrize(
    "prompt, word",
    [
        ("two purple squares moving left", "purple"),
        ("two red squares moving sideways", "sideways"),
        ("one red squares moving left", "square"),
        ("red squares", "<count>"),
        ("two red hexagons moving up", "hexagons"),
    ],
)
def test_bad_prompts_name_the_problem(prompt, word):
    with pytest.raises(ValueError, match=word):
        parse_prompt(prompt)


@pytest.mark.parametrize("direction", range(4))
def test_shapes_move_in_the_named_direction(direction):
    n = 16
    g = torch.Generator().manual_seed(direction)
    attrs = torch.stack(
        [
            torch.zeros(n, dtype=torch.long),  # one shape: its centroid is the shape's
            torch.randint(4, (n,), generator=g),
            torch.randint(3, (n,), generator=g),
            torch.full((n,), direction),
        ],
        dim=-1,
    )
    x = render(attrs, g, SMALL)
    ink = (x.mean(1) > -0.79).float()  # [B, T, H, W] pixels covered by the shape
    ys = torch.arange(32.0)[None, None, :, None]
    xs = torch.arange(32.0)[None, None, None, :]
    mass = ink.sum((2, 3))
    cy, cx = (ink * ys).sum((2, 3)) / mass, (ink * xs).sum((2, 3)) / mass
    dy, dx = cy[:, -1] - cy[:, 0], cx[:, -1] - cx[:, 0]
    along = {"left": -dx, "right": dx, "up": -dy, "down": dy}[DIRECTIONS[direction]]
    # The named axis: at least min_speed per frame, never reversed (no wall in the way).
    assert (along >= 0.9 * SMALL.min_speed * (SMALL.frames - 1)).all(), along


def test_count_adds_shapes_at_the_same_places():
    # One clip per count from the same seed: the random draws are the same, so "two" draws
    # the shape of "one" plus another, and "three" one more again.
    grown = 0
    for seed in range(8):
        inks = []
        for n in range(3):
            x = render(torch.tensor([[n, 1, 0, 2]]), torch.Generator().manual_seed(seed), SMALL)
            inks.append(x.mean(1) > -0.79)
        assert (inks[0] <= inks[1]).all() and (inks[1] <= inks[2]).all()
        grown += int(inks[0].sum() < inks[1].sum() < inks[2].sum())
    assert grown >= 6  # strictly more ink, unless shapes happen to cover each other entirely


def test_world_config_rejects_a_path_longer_than_the_canvas():
    with pytest.raises(ValueError, match="travel"):
        WorldConfig(frames=16, size=32, max_speed=2.0)
