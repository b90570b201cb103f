"""Sparse 3D attention for video diffusion transformers: layouts, patterns, backends."""

from hasten.attn.backends import backend_names, get_backend, register_backend
from hasten.attn.block_table import BlockTable, block_table
from hasten.attn.layout import VideoLayout
from hasten.attn.masks import attention_mask, mask_mod
from hasten.attn.op import SparseAttention, explain_backends, sparse_attention
from hasten.attn.patterns import Dense, FrameTiles, Pattern, SlidingTile

__all__ = [
    "BlockTable",
    "Dense",
    "FrameTiles",
    "Pattern",
    "SlidingTile",
    "SparseAttention",
    "VideoLayout",
    "attention_mask",
    "backend_names",
    "block_table",
    "explain_backends",
    "get_backend",
    "mask_mod",
    "register_backend",
    "sparse_attention",
]
