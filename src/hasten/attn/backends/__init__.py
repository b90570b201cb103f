"""Registered attention backends; importing this module registers the built-in ones."""

from hasten.attn.backends import flex, reference, triton  # noqa: F401  (registration)
from hasten.attn.backends.base import (
    Backend,
    Problem,
    backend_names,
    get_backend,
    rank_backends,
    register_backend,
    select_backend,
)

__all__ = [
    "Backend",
    "Problem",
    "backend_names",
    "get_backend",
    "rank_backends",
    "register_backend",
    "select_backend",
]
