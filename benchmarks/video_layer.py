"""One HunyuanVideo 720p attention layer in the model's layout: per-head windows in one launch
against one launch per head group, and STA (3,3,3), with the kernel alone beside each.

The layer is what ``enable_sparse_attention`` runs: raster-order ``[1, S, 24, 128]`` bf16
q, k, v with 256 text tokens, permuted into tiles and back. The per-head pattern draws every
head's window from the mask-search candidates (seeded), as ``benchmarks/video_e2e.py`` does.
About a minute on an H100/H200:

    HASTEN_COMMIT=<sha> python benchmarks/video_layer.py --out $OUT
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

try:
    import hasten  # noqa: F401
except ImportError:  # a bare copy of the tree (the GPU machine): use the source directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hasten.attn import SlidingTile, VideoLayout, sparse_attention
from hasten.attn.bench import Timing, card_slug, environment, time_ms, write_json
from hasten.video.attention import _order, head_groups, video_attention
from hasten.video.fullsize import HUNYUAN


def median_ms(fn, device) -> float:
    return time_ms(fn, device, Timing())[0]


def grouped(q, k, v, layout, pattern):
    """The head-group path (one launch per distinct window), for comparison."""
    to, back = _order(layout, "cuda", False), _order(layout, "cuda", True)
    qt, kt, vt = (x.transpose(1, 2).index_select(2, to) for x in (q, k, v))
    out = torch.empty_like(qt)
    for rule, heads in head_groups(pattern, q.shape[2]):
        idx = torch.tensor(heads, device="cuda")
        sub = (x.index_select(1, idx) for x in (qt, kt, vt))
        out.index_copy_(1, idx, sparse_attention(*sub, layout, rule))
    return out.transpose(1, 2).index_select(1, back)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("this benchmark needs a CUDA device")
    device = torch.device("cuda")
    layout = VideoLayout(HUNYUAN.canvas, HUNYUAN.tile, text_tokens=HUNYUAN.text_tokens)
    shape = (1, layout.seq_len, 24, 128)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(3))
    heads_first = [x.transpose(1, 2).contiguous() for x in (q, k, v)]
    rng = random.Random(0)
    patterns = {
        "sta-333": SlidingTile((3, 3, 3)),
        "per-head": SlidingTile([rng.choice(HUNYUAN.candidates) for _ in range(24)]),
    }
    rows = []
    for name, pattern in patterns.items():
        row = {"pattern": name, "window": repr(pattern)}
        row["layer_ms"] = median_ms(lambda p=pattern: video_attention(q, k, v, layout, p), device)
        row["kernel_only_ms"] = median_ms(
            lambda p=pattern: sparse_attention(*heads_first, layout, p), device
        )
        if pattern.heads is not None:
            row["head_groups_layer_ms"] = median_ms(
                lambda p=pattern: grouped(q, k, v, layout, p), device
            )
            diff = grouped(q, k, v, layout, pattern) - video_attention(q, k, v, layout, pattern)
            row["max_abs_diff_vs_groups"] = float(diff.abs().max())
        print(row, flush=True)
        rows.append(row)
    path = args.out / f"video-layer-{card_slug(device)}.json"
    write_json(path, environment(device), rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
