"""Ulysses attention across real gloo processes equals one process, forward and backward."""

from __future__ import annotations

import itertools
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hasten.attn import Dense, FrameTiles, SlidingTile, VideoLayout, sparse_attention
from hasten.parallel import ShardPlan, UlyssesAttention, ulysses_attention
from hasten.parallel.ulysses import gather_sequence
from tests.attn.numerics import assert_within_torch_error, naive_attention

# Ragged canvas (tile 2x2x3 does not divide 5x4x7) with padded text: the hard case.
LAYOUT = VideoLayout(canvas=(5, 4, 7), tile=(2, 2, 3), text_tokens=6)
CASES = {
    "dense": (LAYOUT, Dense(), None),
    "sta-per-head": (LAYOUT, SlidingTile([(1, 1, 1), (3, 1, 3), (1, 3, 1), (3, 3, 3)] * 3), [6, 3]),
    "frame-tiles": (VideoLayout((6, 4, 4), (2, 2, 2), 5, text_first=True), FrameTiles(1), [2, 5]),
}
HEADS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(layout, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, HEADS, layout.seq_len, 16, generator=g, dtype=torch.float64).to(dtype)
        for _ in range(3)
    ]


def _worker(rank, world, port, cases, dtype):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case in cases:
            _check_case(rank, world, case, dtype)
    finally:
        dist.destroy_process_group()


def _check_case(rank, world, case, dtype):
    """One case on this rank: the output piece and its gradients match one process."""
    layout, pattern, lengths = CASES[case]
    plan = ShardPlan(layout, world)
    full = _inputs(layout, dtype)
    grad_out = torch.randn(full[0].shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    # The single-process result, and PyTorch's own error in this dtype against float64.
    ref_in = [t.clone().requires_grad_() for t in full]
    ref = sparse_attention(*ref_in, layout, pattern, text_lengths=lengths, backend="reference")
    ref.backward(grad_out)
    local = [plan.shard(t, rank).clone().requires_grad_() for t in full]
    out = ulysses_attention(*local, layout, pattern, text_lengths=lengths, backend="reference")
    out.backward(plan.shard(grad_out, rank))
    if dtype == torch.float64:
        # Same arithmetic per head on fewer heads: equal to rounding.
        torch.testing.assert_close(out, plan.shard(ref, rank), rtol=1e-10, atol=1e-12)
        for name, a, b in zip("qkv", local, ref_in, strict=True):
            torch.testing.assert_close(
                a.grad, plan.shard(b.grad, rank), rtol=1e-10, atol=1e-12, msg=f"d{name}"
            )
    else:
        mask = pattern.mask(layout)
        mask = mask if mask.dim() == 3 else mask.expand(HEADS, -1, -1)
        mask = mask[None].repeat(2, 1, 1, 1)
        for b, n in enumerate(lengths or []):
            pad = torch.zeros(layout.seq_len, dtype=torch.bool)
            pad[layout.text_slice.start + n : layout.text_slice.stop] = True
            mask[b, :, :, pad] = False
        truth = naive_attention(*full, mask)
        assert_within_torch_error(out, plan.shard(ref, rank), plan.shard(truth, rank), dtype)
    # Gathering the pieces gives the whole output on every rank.
    whole = gather_sequence(out.detach(), plan)
    torch.testing.assert_close(whole, ref.detach(), rtol=1e-5, atol=1e-6)


# One spawn runs every case: starting processes costs more than the cases themselves.
@pytest.mark.parametrize("world", [2, 3])
def test_ulysses_equals_one_process_float64(world):
    mp.spawn(_worker, args=(world, _free_port(), list(CASES), torch.float64), nprocs=world)


def test_ulysses_float32_within_torch_error():
    mp.spawn(_worker, args=(2, _free_port(), ["sta-per-head"], torch.float32), nprocs=2)


def test_shards_are_whole_tiles_that_cover_the_sequence():
    layout = VideoLayout(canvas=(21, 45, 80), tile=(6, 8, 8), text_tokens=256)
    for world in (1, 2, 3, 4, 8):
        plan = ShardPlan(layout, world)
        cuts, sizes = plan.tile_cuts, plan.sizes
        assert cuts[0] == 0 and cuts[-1] == layout.num_tiles
        assert all(b > a for a, b in itertools.pairwise(cuts))
        assert sum(sizes) == layout.seq_len
        tiles = layout.tile_sizes().flatten().tolist()
        video = [sum(tiles[a:b]) for a, b in itertools.pairwise(cuts)]
        assert video[:-1] == sizes[:-1] and video[-1] + 256 == sizes[-1]
        # As even as whole tiles allow: no piece is off the ideal by more than a tile.
        ideal = layout.video_tokens / world
        assert max(abs(v - ideal) for v in video) <= max(tiles), (world, video)
    # A text-first layout gives its text to rank 0; shards are views of the full sequence.
    plan = ShardPlan(VideoLayout((4, 4, 4), (2, 2, 2), 3, text_first=True), 2)
    assert plan.sizes == [35, 32]
    x = torch.arange(67.0)[:, None]
    assert torch.equal(torch.cat([plan.shard(x, r) for r in range(2)]), x)


def test_bad_plans_and_calls_explain_themselves():
    with pytest.raises(ValueError, match="only 8 tiles"):
        ShardPlan(VideoLayout((4, 4, 4), (2, 2, 2)), 9)
    with pytest.raises(ValueError, match="world_size must be"):
        ShardPlan(LAYOUT, 0)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        ShardPlan(LAYOUT, 2).shard(torch.zeros(LAYOUT.seq_len, 1), 2)
    with pytest.raises(RuntimeError, match="torchrun"):
        UlyssesAttention(LAYOUT, Dense())


def _bad_heads_worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        plan = ShardPlan(LAYOUT, world)
        q = torch.randn(1, 4, plan.sizes[rank], 8)
        with pytest.raises(ValueError, match=r"4 heads do not divide among 3 ranks.*\[1, 2, 4\]"):
            ulysses_attention(q, q, q, LAYOUT, Dense())
        with pytest.raises(ValueError, match=r"pass plan\.shard"):
            ulysses_attention(q[:, :, :-1], q[:, :, :-1], q[:, :, :-1], LAYOUT, Dense())
    finally:
        dist.destroy_process_group()


def test_heads_that_do_not_divide_are_refused():
    mp.spawn(_bad_heads_worker, args=(3, _free_port()), nprocs=3)


def test_documented_torchrun_check_passes():
    """The command docs/parallel.md gives, through the real torchrun launcher."""
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        "-m",
        "hasten.parallel.check",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max |error| vs one process 0.00e+00" in done.stdout


def _model_worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from hasten.parallel import sequence_parallel
        from hasten.toyvideo.model import DiTConfig, VideoDiT

        torch.manual_seed(0)
        cfg = DiTConfig(frames=4, size=16, patch=(1, 4, 4), dim=24, depth=2, heads=3)
        model = VideoDiT(cfg).double()
        with torch.no_grad():  # the zero-initialised output layers would hide every error
            for p in model.parameters():
                p.normal_(0, 0.3)
        model.set_patterns([FrameTiles(1), SlidingTile((3, 1, 1))])
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 3, 4, 16, 16, generator=g, dtype=torch.float64)
        t, text = torch.tensor([0.3, 0.8], dtype=torch.float64), torch.randint(0, 10, (2, 5))
        want = model(x, t, text)
        sp = sequence_parallel(model.blocks, cfg.layout, heads=cfg.heads)
        assert all(type(b.attn).__name__ == "UlyssesAttention" for b in model.blocks)
        model.set_patterns([SlidingTile((3, 1, 1)), FrameTiles(1)])  # stays parallel
        assert all(type(b.attn).__name__ == "UlyssesAttention" for b in model.blocks)
        got = model(x, t, text)
        sp.remove()
        single = model(x, t, text)  # the same swapped patterns, one process again
        torch.testing.assert_close(got, single, rtol=1e-10, atol=1e-12)
        assert (got - want).abs().max() > 1e-6  # the patterns really changed the output
        assert all(type(b.attn).__name__ == "SparseAttention" for b in model.blocks)
    finally:
        dist.destroy_process_group()


def test_reference_video_model_runs_sequence_parallel():
    """hasten's own video DiT, sharded from outside over 3 gloo ranks, equals one process."""
    mp.spawn(_model_worker, args=(3, _free_port()), nprocs=3)


def test_generate_nproc_gives_the_single_process_clip(tmp_path, capsys):
    """`hasten generate --nproc 3` (3 gloo processes) writes the same GIF as one process."""
    from PIL import Image

    from hasten.cli import main

    prompt = "two red squares moving left"
    assert main(["generate", prompt, "--nproc", "3", "-o", str(tmp_path / "sp.gif")]) == 0
    assert main(["generate", prompt, "-o", str(tmp_path / "one.gif")]) == 0
    a, b = Image.open(tmp_path / "sp.gif"), Image.open(tmp_path / "one.gif")
    assert a.n_frames == b.n_frames == 16
    for i in range(a.n_frames):
        a.seek(i)
        b.seek(i)
        assert a.convert("RGB").tobytes() == b.convert("RGB").tobytes(), f"frame {i}"
    assert main(["generate", prompt, "--nproc", "2"]) == 2
    assert "3 heads do not divide among 2 ranks" in capsys.readouterr().err
