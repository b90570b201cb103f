"""A procedural video world: coloured shapes moving and bouncing, with a caption per clip."""

from __future__ import annotations

from dataclasses import dataclass

import torch

COUNTS = ("one", "two", "three")
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
#: The attributes a caption names, in caption order; each is an index into its vocabulary.
ATTRIBUTES = {"count": COUNTS, "colour": COLOURS, "shape": SHAPES, "direction": DIRECTIONS}

_RGB = torch.tensor([[0.95, 0.15, 0.15], [0.15, 0.85, 0.2], [0.2, 0.35, 1.0], [0.95, 0.9, 0.1]])
# Unit direction vectors in (y, x) image coordinates (y grows downwards).
_DIR = torch.tensor([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])

#: Word vocabulary of the captions; id 0 is the null prompt (classifier-free guidance).
VOCAB = ("<null>", *COUNTS, *COLOURS, *SHAPES, *(s + "s" for s in SHAPES), "moving", *DIRECTIONS)
TEXT_TOKENS = 5  # "<count> <colour> <shape> moving <direction>"
_WORD_ID = {w: i for i, w in enumerate(VOCAB)}


@dataclass(frozen=True)
class WorldConfig:
    """Clip geometry and motion ranges (pixels, frames)."""

    frames: int = 16
    size: int = 64
    min_radius: float = 5.0
    max_radius: float = 8.0
    min_speed: float = 1.0
    max_speed: float = 2.0
    max_drift: float = 1.5  # speed across the named direction, reflected at the walls

    def __post_init__(self) -> None:
        if self.frames < 2 or self.size < 16:
            raise ValueError(
                f"a clip needs >= 2 frames of >= 16 px, got frames={self.frames}, "
                f"size={self.size}; e.g. WorldConfig(frames=16, size=64)"
            )
        if not 0 < self.min_radius <= self.max_radius:
            raise ValueError(
                f"radii must satisfy 0 < min_radius <= max_radius, got "
                f"{self.min_radius}, {self.max_radius}"
            )
        if not 0 < self.min_speed <= self.max_speed:
            raise ValueError(
                f"speeds must satisfy 0 < min_speed <= max_speed, got "
                f"{self.min_speed}, {self.max_speed}"
            )
        travel = self.max_speed * (self.frames - 1) + 2 * self.max_radius
        if travel >= self.size:
            raise ValueError(
                f"a shape can travel {travel:.0f} px but the canvas is {self.size} px; "
                f"lower max_speed or frames, or raise size"
            )


def caption(attrs: torch.Tensor) -> str:
    """``[4]`` attribute indices (count, colour, shape, direction) -> a caption.

    E.g. ``[1, 0, 0, 0]`` -> "two red squares moving left".
    """
    n, c, s, d = (int(a) for a in attrs)
    shape = SHAPES[s] + ("s" if n > 0 else "")
    return f"{COUNTS[n]} {COLOURS[c]} {shape} moving {DIRECTIONS[d]}"


def parse_prompt(prompt: str) -> torch.Tensor:
    """The inverse of :func:`caption`; bad words raise ``ValueError`` naming the choices."""
    words = prompt.lower().split()
    if len(words) != TEXT_TOKENS or words[3] != "moving":
        raise ValueError(
            f"prompt {prompt!r} is not '<count> <colour> <shape> moving <direction>'; "
            f"e.g. 'two red squares moving left'"
        )
    count, colour, shape, _, direction = words
    out = []
    for name, word, choices in (
        ("count", count, COUNTS),
        ("colour", colour, COLOURS),
        ("direction", direction, DIRECTIONS),
    ):
        if word not in choices:
            raise ValueError(f"{name} {word!r} in {prompt!r} is not one of {list(choices)}")
        out.append(choices.index(word))
    base = shape[:-1] if shape.endswith("s") else shape
    if base not in SHAPES:
        raise ValueError(f"shape {shape!r} in {prompt!r} is not one of {list(SHAPES)}")
    plural = shape.endswith("s")
    if plural != (count != "one"):
        want = base + ("" if count == "one" else "s")
        raise ValueError(f"{count!r} needs {want!r}, not {shape!r}, in {prompt!r}")
    out.insert(2, SHAPES.index(base))
    return torch.tensor(out)


def tokenize(prompts: list[str]) -> torch.Tensor:
    """``[B, TEXT_TOKENS]`` word ids of validated prompts."""
    for p in prompts:
        parse_prompt(p)
    return torch.tensor([[_WORD_ID[w] for w in p.lower().split()] for p in prompts])


def attributes_to_tokens(attrs: torch.Tensor) -> torch.Tensor:
    """``[B, 4]`` attribute indices -> ``[B, TEXT_TOKENS]`` word ids, vectorised."""
    n, c, s, d = attrs.unbind(-1)
    plural = (n > 0).long()
    base = torch.tensor(
        [1, 1 + len(COUNTS), 1 + len(COUNTS) + len(COLOURS), 0, 0], device=attrs.device
    )
    shape = 1 + len(COUNTS) + len(COLOURS) + s + plural * len(SHAPES)
    moving = torch.full_like(n, _WORD_ID["moving"])
    direction = _WORD_ID["moving"] + 1 + d
    return torch.stack([base[0] + n, base[1] + c, shape, moving, direction], dim=-1)


def all_attributes() -> torch.Tensor:
    """Every one of the world's captions as ``[144, 4]`` attribute indices."""
    sizes = [len(v) for v in ATTRIBUTES.values()]
    grids = torch.meshgrid(*(torch.arange(n) for n in sizes), indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


def sample_attributes(n: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 4]`` uniformly random captions."""
    return torch.stack(
        [torch.randint(len(v), (n,), generator=generator) for v in ATTRIBUTES.values()], dim=-1
    )


def render(
    attrs: torch.Tensor,
    generator: torch.Generator,
    config: WorldConfig = WorldConfig(),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Clips for ``[B, 4]`` attributes: ``[B, 3, T, H, W]`` in [-1, 1].

    Randomness (positions, sizes, speeds) comes from ``generator`` on the CPU and the
    drawing runs on ``device``, so a seed gives the same clips on every device.
    """
    cfg, B = config, attrs.shape[0]
    T, S, m = cfg.frames, cfg.size, len(COUNTS)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(B, m, generator=generator)

    radius = u(cfg.min_radius, cfg.max_radius)
    speed = u(cfg.min_speed, cfg.max_speed)
    drift = u(-cfg.max_drift, cfg.max_drift)
    start_along = torch.rand(B, m, generator=generator)
    start_across = torch.rand(B, m, generator=generator)

    d = _DIR[attrs[:, 3]][:, None, :]  # [B, 1, 2]
    # Along the named direction the shape never reaches a wall in T frames: it starts where
    # its whole path fits. Across it, the drift bounces off the walls.
    travel = speed * (T - 1)
    lo_along = radius + travel * (d.sum(-1) < 0)
    hi_along = S - radius - travel * (d.sum(-1) > 0)
    along0 = lo_along + (hi_along - lo_along) * start_along
    across0 = radius + (S - 2 * radius) * start_across
    t = torch.arange(T, dtype=torch.float32)[None, None, :]
    along = along0[..., None] + (d.sum(-1) * speed)[..., None] * t  # [B, m, T]
    span = (S - 2 * radius)[..., None]
    raw = across0[..., None] - radius[..., None] + drift[..., None] * t
    folded = torch.remainder(raw, 2 * span)
    across_pos = radius[..., None] + torch.where(folded > span, 2 * span - folded, folded)
    horizontal = (d[..., 1] != 0)[..., None]  # [B, 1, 1]
    cy = torch.where(horizontal, across_pos, along)
    cx = torch.where(horizontal, along, across_pos)

    dev = torch.device(device)
    cy, cx, r = cy.to(dev), cx.to(dev), radius.to(dev)[..., None, None, None]
    grid = torch.arange(S, dtype=torch.float32, device=dev) + 0.5
    dy = grid[None, None, None, :, None] - cy[..., None, None]  # [B, m, T, S, 1]
    dx = grid[None, None, None, None, :] - cx[..., None, None]  # [B, m, T, 1, S]
    shape = attrs[:, 2].to(dev)[:, None, None, None, None]
    square = torch.maximum(dy.abs(), dx.abs()) - r
    circle = torch.sqrt(dy**2 + dx**2) - r
    # An upward isosceles triangle: base at cy + r, apex at cy - r, half-width r at the base.
    triangle = torch.maximum(dy - r, (2 * dx.abs() - dy - r) / 5**0.5)
    dist = torch.where(shape == 0, square, torch.where(shape == 1, circle, triangle))
    cover = (0.5 - dist).clamp(0, 1)  # one pixel of anti-aliasing
    present = (torch.arange(m, device=dev)[None, :] <= attrs[:, 0].to(dev)[:, None]).float()
    cover = cover * present[..., None, None, None]
    alpha = cover.amax(dim=1)  # [B, T, S, S]: overlaps of one colour simply merge
    rgb = _RGB.to(dev)[attrs[:, 1].to(dev)][:, :, None, None, None]  # [B, 3, 1, 1, 1]
    background = -0.8
    return background + alpha[:, None] * (rgb * 2 - 1 - background)


def sample_clips(
    n: int,
    seed: int,
    config: WorldConfig = WorldConfig(),
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random clips and their attributes; the same seed gives the same clips."""
    g = torch.Generator().manual_seed(seed)
    attrs = sample_attributes(n, g)
    return render(attrs, g, config, device), attrs
