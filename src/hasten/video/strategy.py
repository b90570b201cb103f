"""Sparse attention strategies: which pattern each (denoising step, layer, head) uses, and JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hasten.attn.layout import Dims, VideoLayout, _as_dims
from hasten.attn.patterns import Dense, FrameTiles, Pattern, SlidingTile, _window_tuple

FORMAT = "hasten.video.strategy"
VERSION = 1
KINDS = ("dense", "sliding-tile", "frame-tiles", "per-head")
_KEY = re.compile(r"^(\d+)_(\d+)_(\d+)$")


@dataclass(frozen=True)
class Strategy:
    """Base of every strategy: the tile, the leading dense steps and the canvas it was made for.

    ``tile`` is the (t, h, w) token box windows are counted in. The first ``dense_steps``
    denoising steps run dense attention (the published recipe keeps ~12-15 of 50). ``canvas``
    is the latent (T, H, W) after patchify a strategy was made for (``None``: any); using it
    on another canvas is an error, since calibrated windows mean nothing elsewhere.
    """

    tile: Dims = (6, 8, 8)
    dense_steps: int = 0
    canvas: Dims | None = None
    meta: Mapping = field(default_factory=dict, compare=False, hash=False)

    kind = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", _as_dims(self.tile, "tile"))
        if self.canvas is not None:
            object.__setattr__(self, "canvas", _as_dims(self.canvas, "canvas"))
        if not isinstance(self.dense_steps, int) or self.dense_steps < 0:
            raise ValueError(f"dense_steps must be an int >= 0, got {self.dense_steps!r}")
        object.__setattr__(self, "meta", dict(self.meta))

    # ---- what runs where -----------------------------------------------------------------
    def pattern(self, step: int, layer: int) -> Pattern:
        """The pattern of ``layer`` at denoising ``step`` (per head where the strategy is)."""
        if step < self.dense_steps:
            return Dense()
        return self._sparse_pattern(step, layer)

    def _sparse_pattern(self, step: int, layer: int) -> Pattern:
        raise NotImplementedError

    def check_model(self, layers: int, heads: int, model: str = "the transformer") -> None:
        """Raise ``ValueError`` if the strategy does not fit ``layers`` x ``heads``."""

    def layout(self, canvas: Dims, text_tokens: int = 0, text_first: bool = False) -> VideoLayout:
        """The token layout at ``canvas``; raises if the strategy was made for another one."""
        canvas = _as_dims(canvas, "canvas")
        if self.canvas is not None and canvas != self.canvas:
            raise ValueError(
                f"this {self.kind} strategy was made for canvas {_x(self.canvas)} but the model "
                f"runs at {_x(canvas)} (latent T x H x W after patchify); calibrate for "
                f"{_x(canvas)} or use a strategy without a canvas, e.g. "
                f"SlidingTileStrategy(window=(3, 3, 3), tile={self.tile})"
            )
        tile = tuple(min(t, c) for t, c in zip(self.tile, canvas, strict=True))
        return VideoLayout(canvas, tile, text_tokens=text_tokens, text_first=text_first)

    def validate_canvas(self, canvas: Dims, layers: int) -> None:
        """Check every pattern of the strategy against ``canvas`` (e.g. even windows)."""
        layout = self.layout(canvas)
        for step, layer in self._sparse_keys(layers):
            try:
                self._sparse_pattern(step, layer).validate(layout)
            except ValueError as err:
                raise ValueError(f"step {step}, layer {layer}: {err}") from None

    def _sparse_keys(self, layers: int) -> list[tuple[int, int]]:
        return [(self.dense_steps, layer) for layer in range(layers)]

    def sparsity(self, canvas: Dims, layers: int, heads: int, steps: int) -> float:
        """Mean video attention sparsity over ``steps`` x ``layers`` x ``heads`` (dense
        steps count as 0)."""
        known: dict[Pattern, float] = {}
        total = sum(
            self.step_sparsity(canvas, layers, heads, s, _known=known) for s in range(steps)
        )
        return total / steps

    def step_sparsity(
        self, canvas: Dims, layers: int, heads: int, step: int, *, _known: dict | None = None
    ) -> float:
        """Mean video attention sparsity of one denoising step over its layers and heads."""
        from hasten.video.attention import head_groups

        layout = self.layout(canvas)
        known = {} if _known is None else _known  # a few distinct windows recur everywhere
        total = 0.0
        for layer in range(layers):
            for rule, hs in head_groups(self.pattern(step, layer), heads):
                if rule not in known:
                    known[rule] = float(rule.sparsity(layout))
                total += known[rule] * (heads if hs is None else len(hs))
        return total / (layers * heads)

    # ---- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"format": FORMAT, "version": VERSION, "kind": self.kind, "tile": list(self.tile)}
        out["dense_steps"] = self.dense_steps
        out["canvas"] = None if self.canvas is None else list(self.canvas)
        out.update(self._fields())
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    def _fields(self) -> dict:
        return {}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def _x(d) -> str:
    return "x".join(map(str, d))


@dataclass(frozen=True)
class DenseStrategy(Strategy):
    """Dense attention everywhere (the baseline; unmasked SDPA where the text has no padding)."""

    kind = "dense"

    def _sparse_pattern(self, step: int, layer: int) -> Pattern:
        return Dense()


@dataclass(frozen=True)
class SlidingTileStrategy(Strategy):
    """One STA window ``(wt, wh, ww)`` in tiles for every layer and head after the dense steps."""

    window: Dims = (3, 3, 3)
    kind = "sliding-tile"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "window", _window_tuple(self.window, "window"))

    def _sparse_pattern(self, step: int, layer: int) -> Pattern:
        return SlidingTile(self.window)

    def _fields(self) -> dict:
        return {"window": list(self.window)}


@dataclass(frozen=True)
class FrameTileStrategy(Strategy):
    """Efficient-vDiT's ``k:(T-k)`` frame pattern; one ``k`` or one per layer (latent frames)."""

    global_frames: int | tuple[int, ...] = 1
    kind = "frame-tiles"

    def __post_init__(self) -> None:
        super().__post_init__()
        k = self.global_frames
        ks = tuple(int(x) for x in k) if isinstance(k, Sequence) else (int(k),)
        if not ks or any(x < 0 for x in ks):
            raise ValueError(f"global_frames must be >= 0 (one, or one per layer), got {k!r}")
        object.__setattr__(self, "global_frames", ks if isinstance(k, Sequence) else ks[0])

    def _sparse_pattern(self, step: int, layer: int) -> Pattern:
        k = self.global_frames
        return FrameTiles(k[layer] if isinstance(k, tuple) else k)

    def check_model(self, layers: int, heads: int, model: str = "the transformer") -> None:
        k = self.global_frames
        if isinstance(k, tuple) and len(k) != layers:
            raise ValueError(
                f"global_frames lists {len(k)} layers but {model} has {layers} attention layers; "
                f"give one k per layer or a single k for all"
            )

    def _fields(self) -> dict:
        k = self.global_frames
        return {"global_frames": list(k) if isinstance(k, tuple) else k}


@dataclass(frozen=True)
class PerHeadStrategy(Strategy):
    """Calibrated STA windows per (step, layer, head), e.g. from ``hasten calibrate``.

    ``windows[s][l][h]`` is the window of head ``h`` of layer ``l`` at step
    ``dense_steps + s``; steps from ``dense_steps`` to ``steps - 1`` are all covered.
    """

    windows: tuple[tuple[tuple[Dims, ...], ...], ...] = ()
    kind = "per-head"

    def __post_init__(self) -> None:
        super().__post_init__()
        rows = []
        for s, layers in enumerate(self.windows):
            row = []
            for layer, heads in enumerate(layers):
                where = f"windows[{s}][{layer}]"
                row.append(tuple(_window_tuple(w, f"{where}[{h}]") for h, w in enumerate(heads)))
            rows.append(tuple(row))
        if not rows or not rows[0]:
            raise ValueError("a per-head strategy needs windows for at least one step and layer")
        shape = (len(rows[0]), len(rows[0][0]))
        for s, row in enumerate(rows):
            if len(row) != shape[0] or any(len(heads) != shape[1] for heads in row):
                found = (len(row), sorted({len(h) for h in row}))
                raise ValueError(
                    f"step {self.dense_steps + s} has {found[0]} layers with {found[1]} heads; "
                    f"every step needs {shape[0]} layers of {shape[1]} heads"
                )
        object.__setattr__(self, "windows", tuple(rows))

    @property
    def steps(self) -> int:
        return self.dense_steps + len(self.windows)

    @property
    def layers(self) -> int:
        return len(self.windows[0])

    @property
    def heads(self) -> int:
        return len(self.windows[0][0])

    def _sparse_pattern(self, step: int, layer: int) -> Pattern:
        if step >= self.steps:
            raise ValueError(
                f"step {step} is past this strategy's {self.steps} steps (0..{self.steps - 1}); "
                f"calibrate for at least {step + 1} denoising steps or run fewer"
            )
        heads = self.windows[step - self.dense_steps][layer]
        return SlidingTile(heads[0]) if len(set(heads)) == 1 else SlidingTile(list(heads))

    def _sparse_keys(self, layers: int) -> list[tuple[int, int]]:
        return [(s, layer) for s in range(self.dense_steps, self.steps) for layer in range(layers)]

    def check_model(self, layers: int, heads: int, model: str = "the transformer") -> None:
        if self.layers != layers or self.heads != heads:
            raise ValueError(
                f"the strategy has windows for {self.layers} layers x {self.heads} heads but "
                f"{model} has {layers} attention layers x {heads} heads; use a strategy "
                f"calibrated for this model (hasten calibrate) or a fixed window such as "
                f"SlidingTileStrategy(window=(3, 3, 3))"
            )

    def entries(self) -> dict[str, list[int]]:
        """The published flat form: ``"{step}_{layer}_{head}" -> [wt, wh, ww]``."""
        out = {}
        for s, row in enumerate(self.windows):
            for layer, heads in enumerate(row):
                for h, w in enumerate(heads):
                    out[f"{self.dense_steps + s}_{layer}_{h}"] = list(w)
        return out

    def _fields(self) -> dict:
        fields = {"steps": self.steps, "layers": self.layers, "heads": self.heads}
        return {**fields, "windows": self.entries()}

    @classmethod
    def from_entries(
        cls,
        entries: Mapping[str, Sequence[int]],
        *,
        tile: Dims = (6, 8, 8),
        canvas: Dims | None = None,
        dense_steps: int | None = None,
        shape: tuple[int, int, int] | None = None,
        meta: Mapping | None = None,
    ) -> PerHeadStrategy:
        """From the flat ``"{step}_{layer}_{head}"`` map; steps before the first are dense.

        ``shape = (steps, layers, heads)`` states the expected extents (checked); without it
        they are read off the keys. Every key in between must be present.
        """
        if not isinstance(entries, Mapping) or not entries:
            raise ValueError("windows must be a non-empty map of '{step}_{layer}_{head}' keys")
        found: dict[tuple[int, int, int], Dims] = {}
        for key, w in entries.items():
            m = _KEY.match(str(key))
            if m is None:
                raise ValueError(
                    f"bad strategy key {key!r}: keys are '{{step}}_{{layer}}_{{head}}', e.g. "
                    f"'15_0_3'"
                )
            found[tuple(int(x) for x in m.groups())] = _window_tuple(w, f"windows[{key!r}]")
        first = min(k[0] for k in found)
        start = first if dense_steps is None else dense_steps
        if first < start:
            raise ValueError(
                f"windows list step {first} but dense_steps is {start}; steps before "
                f"dense_steps run dense and must not have windows"
            )
        steps, layers, heads = (max(k[i] for k in found) + 1 for i in range(3))
        if shape is not None:
            want = tuple(int(x) for x in shape)
            if want != (steps, layers, heads):
                raise ValueError(
                    f"the windows cover steps..{steps - 1}, {layers} layers, {heads} heads, "
                    f"but the file says steps={want[0]}, layers={want[1]}, heads={want[2]}"
                )
        table = []
        for s in range(start, steps):
            row = []
            for layer in range(layers):
                heads_w = []
                for h in range(heads):
                    if (s, layer, h) not in found:
                        raise ValueError(
                            f"strategy key '{s}_{layer}_{h}' is missing: a per-head strategy "
                            f"needs every step {start}..{steps - 1}, layer 0..{layers - 1} and "
                            f"head 0..{heads - 1}"
                        )
                    heads_w.append(found[s, layer, h])
                row.append(tuple(heads_w))
            table.append(tuple(row))
        table = tuple(table)
        return cls(tile=tile, dense_steps=start, canvas=canvas, windows=table, meta=meta or {})


_CLASSES: dict[str, type[Strategy]] = {
    "dense": DenseStrategy,
    "sliding-tile": SlidingTileStrategy,
    "frame-tiles": FrameTileStrategy,
    "per-head": PerHeadStrategy,
}

#: JSON Schema (draft 2020-12) of a strategy file; the loader checks the same rules with
#: messages that say what to change.
SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "hasten video sparse attention strategy",
    "type": "object",
    "required": ["format", "version", "kind"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "kind": {"enum": list(KINDS)},
        "tile": {"$ref": "#/$defs/dims"},
        "canvas": {"oneOf": [{"$ref": "#/$defs/dims"}, {"type": "null"}]},
        "dense_steps": {"type": "integer", "minimum": 0},
        "window": {"$ref": "#/$defs/dims"},
        "global_frames": {
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            ]
        },
        "steps": {"type": "integer", "minimum": 1},
        "layers": {"type": "integer", "minimum": 1},
        "heads": {"type": "integer", "minimum": 1},
        "windows": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": _KEY.pattern},
            "additionalProperties": {"$ref": "#/$defs/dims"},
        },
        "meta": {"type": "object"},
    },
    "additionalProperties": False,
    "allOf": [
        {
            "if": {"properties": {"kind": {"const": kind}}},
            "then": {
                "required": sorted(own),
                "not": {"anyOf": [{"required": [f]} for f in sorted(foreign)]},
            },
        }
        for kind, own, foreign in (
            ("dense", set(), {"window", "global_frames", "windows"}),
            ("sliding-tile", {"window"}, {"global_frames", "windows"}),
            ("frame-tiles", {"global_frames"}, {"window", "windows"}),
            ("per-head", {"windows"}, {"window", "global_frames"}),
        )
    ],
    "$defs": {
        "dims": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "minItems": 3,
            "maxItems": 3,
        }
    },
}

_ALLOWED = set(SCHEMA["properties"])
_KIND_FIELDS = {
    "dense": set(),
    "sliding-tile": {"window"},
    "frame-tiles": {"global_frames"},
    "per-head": {"windows", "steps", "layers", "heads"},
}


def from_dict(data: Mapping, *, source: str = "strategy") -> Strategy:
    """A strategy from its JSON form, or from the published flat ``"s_l_h" -> window`` map."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{source}: a strategy is a JSON object, got {type(data).__name__}")
    if "format" not in data and data and all(_KEY.match(str(k)) for k in data):
        # The published mask-search output: the bare map, tile 6x8x8.
        return PerHeadStrategy.from_entries(data, meta={"source": source})
    if data.get("format") != FORMAT:
        raise ValueError(
            f"{source}: 'format' is {data.get('format')!r}, expected {FORMAT!r} (or a bare "
            f"map of '{{step}}_{{layer}}_{{head}}' -> [wt, wh, ww])"
        )
    if data.get("version") != VERSION:
        raise ValueError(f"{source}: version {data.get('version')!r} is not {VERSION}")
    kind = data.get("kind")
    if kind not in _CLASSES:
        raise ValueError(f"{source}: kind {kind!r} is not one of {list(KINDS)}")
    unknown = set(data) - _ALLOWED
    foreign = (set(data) & set().union(*_KIND_FIELDS.values())) - _KIND_FIELDS[kind]
    if unknown or foreign:
        bad = sorted(unknown | foreign)
        raise ValueError(
            f"{source}: fields {bad} do not belong in a {kind!r} strategy; allowed: "
            f"{sorted(_ALLOWED - set().union(*_KIND_FIELDS.values()) | _KIND_FIELDS[kind])}"
        )
    common = dict(
        tile=tuple(data.get("tile", (6, 8, 8))),
        dense_steps=data.get("dense_steps", 0),
        canvas=None if data.get("canvas") is None else tuple(data["canvas"]),
        meta=data.get("meta", {}),
    )
    try:
        if kind == "per-head":
            shape = None
            if all(k in data for k in ("steps", "layers", "heads")):
                shape = (data["steps"], data["layers"], data["heads"])
            return PerHeadStrategy.from_entries(data["windows"], shape=shape, **common)
        if kind == "sliding-tile":
            return SlidingTileStrategy(window=data["window"], **common)
        if kind == "frame-tiles":
            k = data["global_frames"]
            return FrameTileStrategy(global_frames=tuple(k) if isinstance(k, list) else k, **common)
        return DenseStrategy(**common)
    except KeyError as err:
        raise ValueError(f"{source}: a {kind!r} strategy needs the field {err}") from None
    except (ValueError, TypeError) as err:
        raise type(err)(f"{source}: {err}") from None


def load_strategy(spec: Strategy | str | Path | Mapping) -> Strategy:
    """A :class:`Strategy` from itself, a preset name, a JSON file path or a JSON dict."""
    from hasten.video.presets import PRESETS

    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, Mapping):
        return from_dict(spec)
    if isinstance(spec, str | Path):
        if str(spec) in PRESETS:
            return PRESETS[str(spec)]
        path = Path(spec)
        if not path.is_file():
            raise ValueError(
                f"strategy {str(spec)!r} is neither a preset ({sorted(PRESETS)}) nor a file"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return from_dict(data, source=str(path))
    raise TypeError(
        f"strategy must be a Strategy, preset name, JSON path or dict, got {type(spec).__name__}"
    )
