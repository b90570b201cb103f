"""FlexAttention backend: the analytic block table as a BlockMask plus a matching mask_mod."""

from __future__ import annotations

import functools
import warnings
from typing import ClassVar

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from hasten.attn.backends.base import Backend, Problem, register_backend
from hasten.attn.block_table import block_table
from hasten.attn.masks import mask_mod

# auto skips eager (CPU) flex when its score matrix alone would take more than this.
EAGER_BUDGET_BYTES = 4 << 30
# FlexAttention's own sparse block size; tiles of 6x8x8 = 384 tokens are 3 blocks.
BLOCK = 128


def flex_block_mask(layout, pattern, text_lengths=None, *, device="cpu", block: int = BLOCK):
    """A ``BlockMask`` from the analytic block table, carrying the exact ``mask_mod``.

    Eager FlexAttention applies only the mask_mod, compiled FlexAttention skips blocks by
    the table and applies the mask_mod on partial blocks: both agree with the oracle.
    """
    lengths = None if text_lengths is None else tuple(int(x) for x in text_lengths)
    return _cached_block_mask(layout, pattern, lengths, str(device), block)


@functools.lru_cache(maxsize=16)
def _cached_block_mask(layout, pattern, lengths, device, block) -> BlockMask:
    lens = None if lengths is None else torch.tensor(lengths)
    table = block_table(layout, pattern, q_block=block, kv_block=block, text_lengths=lens)
    table = table.to(device)
    kv_num, kv_idx = table.partial
    full_num, full_idx = table.full
    S = layout.seq_len
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=(block, block),
        mask_mod=mask_mod(layout, pattern, lens, device=device),
        seq_lengths=(S, S),
    )


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


class FlexBackend(Backend):
    """Compiled (Triton) FlexAttention on GPU; eager (unfused, forward only) on CPU."""

    name = "flex"
    rank: ClassVar[dict[str, int]] = {"cuda": 10, "cpu": 50}

    def unavailable(self, problem: Problem) -> str | None:
        dev = problem.device.type
        if dev not in ("cpu", "cuda"):
            return f"FlexAttention does not run on {dev}"
        if dev == "cpu" and problem.q.requires_grad:
            return "FlexAttention has no backward on CPU"
        if dev == "cpu":
            # Eager flex materializes every score in fp32, like the oracle's mask and more.
            B, H, S, _ = problem.q.shape
            need = B * H * S * S * 4
            if need > EAGER_BUDGET_BYTES:
                return f"eager (CPU) FlexAttention would hold {need / 2**30:.1f} GiB of scores"
        return None

    def forward(self, p: Problem) -> torch.Tensor:
        bm = flex_block_mask(p.layout, p.pattern, p.text_lengths, device=p.device)
        if p.device.type == "cuda":
            return _compiled_flex()(p.q, p.k, p.v, block_mask=bm, scale=p.scale)
        with warnings.catch_warnings():
            # Eager (unfused) is the documented CPU path; its "use torch.compile" hint is noise.
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(p.q, p.k, p.v, block_mask=bm, scale=p.scale)


register_backend(FlexBackend())
