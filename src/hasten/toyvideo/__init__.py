"""The reference video model: a procedural world, a small 3D DiT, its metric and distillation."""

from hasten.toyvideo.checkpoint import load_classifier, load_model, save_model
from hasten.toyvideo.metric import ClipClassifier, Quality, frechet_distance, measure
from hasten.toyvideo.model import DiTConfig, VideoDiT
from hasten.toyvideo.world import WorldConfig, caption, parse_prompt, render, sample_clips

__all__ = [
    "ClipClassifier",
    "DiTConfig",
    "Quality",
    "VideoDiT",
    "WorldConfig",
    "caption",
    "frechet_distance",
    "load_classifier",
    "load_model",
    "measure",
    "parse_prompt",
    "render",
    "sample_clips",
    "save_model",
]
