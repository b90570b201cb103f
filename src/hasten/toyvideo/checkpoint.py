"""Saving and loading the reference models (config, fp16 weights, attention patterns)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from hasten.attn import Dense, FrameTiles, Pattern, SlidingTile
from hasten.toyvideo.metric import ClipClassifier
from hasten.toyvideo.model import DiTConfig, VideoDiT

DATA = Path(__file__).resolve().parent / "data"
#: The packaged models: name -> file under ``data/``.
PACKAGED = {
    "teacher": "teacher.pt",
    "student": "student.pt",
    "sparse-student": "sparse-student.pt",
    "classifier": "classifier.pt",
}


def pattern_to_dict(p: Pattern) -> dict:
    if isinstance(p, Dense):
        return {"pattern": "dense"}
    if isinstance(p, FrameTiles):
        return {"pattern": "frame-tiles", "global_frames": p.global_frames}
    if isinstance(p, SlidingTile):
        return {"pattern": "sta", "window": list(p.window)}
    raise TypeError(f"cannot store pattern {p!r}; use Dense, FrameTiles or SlidingTile")


def pattern_from_dict(d: dict) -> Pattern:
    kind = d.get("pattern")
    if kind == "dense":
        return Dense()
    if kind == "frame-tiles":
        return FrameTiles(d["global_frames"])
    if kind == "sta":
        return SlidingTile(tuple(d["window"]))
    raise ValueError(f"unknown pattern {kind!r} in {d}; use 'dense', 'frame-tiles' or 'sta'")


def save_model(path: Path, model: VideoDiT, **meta) -> None:
    """fp16 weights, the config, the per-layer patterns and any metadata, in one file."""
    state = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}
    payload = {
        "kind": "video-dit",
        "config": model.cfg.to_dict(),
        "patterns": [pattern_to_dict(p) for p in model.patterns],
        "meta": meta,
        "state_dict": state,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_model(path: Path | str, device="cpu") -> tuple[VideoDiT, dict]:
    """A model saved by :func:`save_model` (fp32 on ``device``) and its metadata."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("kind") != "video-dit":
        raise ValueError(f"{path} is not a hasten reference video model checkpoint")
    # Checkpoints from before the prediction option predicted the velocity.
    model = VideoDiT(DiTConfig(**{"prediction": "velocity", **payload["config"]}))
    model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
    model.set_patterns([pattern_from_dict(d) for d in payload["patterns"]])
    return model.to(device).eval(), payload["meta"]


def save_classifier(path: Path, model: ClipClassifier, **meta) -> None:
    state = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}
    width = model.net[0].out_channels
    torch.save(
        {
            "kind": "clip-classifier",
            "width": width,
            "features": model.features.out_features,
            "meta": meta,
            "state_dict": state,
        },
        path,
    )


def load_classifier(path: Path | str, device="cpu") -> tuple[ClipClassifier, dict]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("kind") != "clip-classifier":
        raise ValueError(f"{path} is not a hasten clip classifier checkpoint")
    model = ClipClassifier(payload["width"], payload["features"])
    model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
    return model.to(device).eval(), payload["meta"]


def resolve(name_or_path: str) -> Path:
    """A packaged model name (``teacher``, ``student``, ...) or a checkpoint path."""
    if name_or_path in PACKAGED:
        path = DATA / PACKAGED[name_or_path]
        if not path.exists():
            raise ValueError(f"the packaged {name_or_path!r} weights are missing ({path})")
        return path
    path = Path(name_or_path)
    if path.suffix == ".pt" and path.is_file():
        return path
    raise ValueError(
        f"model {name_or_path!r} is neither a packaged model ({', '.join(PACKAGED)}) nor a .pt "
        f"checkpoint file; diffusers pipelines go through hasten.video (not this reference model)"
    )


class EMA:
    """Exponential moving average of a model's weights (the copy that is sampled from)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm up: early on the average would be dominated by the random initialisation.
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - d)


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
