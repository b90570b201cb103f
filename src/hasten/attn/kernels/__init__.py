"""Triton kernels for block-sparse attention (imported only where Triton is installed)."""
