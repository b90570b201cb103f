"""Named strategies: a canvas, a tile and windows for the published model shapes."""

from __future__ import annotations

from hasten.video.strategy import (
    DenseStrategy,
    FrameTileStrategy,
    SlidingTileStrategy,
    Strategy,
)

# Latent canvases after patchify (t, h, w): HunyuanVideo 720p x 117 frames, Wan2.1 720p x 81
# frames (1x2x2 patches of a 21x90x160 latent), CogVideoX 480p x 49 frames.
HUNYUAN_720P = (30, 48, 80)
WAN_720P = (21, 45, 80)
COGVIDEOX_480P = (13, 30, 45)

PRESETS: dict[str, Strategy] = {
    # STA's fine-tuned setting: (3,3,3) of a 5x6x10 tile grid keeps 27 of 300 tiles (91%).
    "hunyuanvideo-720p-117f": SlidingTileStrategy(
        window=(3, 3, 3), tile=(6, 8, 8), canvas=HUNYUAN_720P, meta={"model": "hunyuanvideo"}
    ),
    # (5,5,5) keeps 125 of 300 tiles (58%), after the first 15 of 50 steps dense.
    "hunyuanvideo-720p-117f-555": SlidingTileStrategy(
        window=(5, 5, 5),
        tile=(6, 8, 8),
        canvas=HUNYUAN_720P,
        dense_steps=15,
        meta={"model": "hunyuanvideo"},
    ),
    # Efficient-vDiT's k:(T-k) family at k = 4 latent frames.
    "hunyuanvideo-720p-117f-frames4": FrameTileStrategy(
        global_frames=4, tile=(6, 8, 8), canvas=HUNYUAN_720P, meta={"model": "hunyuanvideo"}
    ),
    "wan-720p-81f": SlidingTileStrategy(
        window=(3, 3, 3), tile=(6, 8, 8), canvas=WAN_720P, meta={"model": "wan"}
    ),
    "cogvideox-480p-49f": SlidingTileStrategy(
        window=(3, 3, 3), tile=(6, 8, 8), canvas=COGVIDEOX_480P, meta={"model": "cogvideox"}
    ),
    "dense": DenseStrategy(),
}

#: The published HunyuanVideo mask-search candidates, in tiles of 6x8x8 on a 5x6x10 grid;
#: the last is the full window.
HUNYUAN_CANDIDATES = ((1, 6, 10), (3, 3, 5), (5, 1, 10), (5, 3, 3), (5, 6, 1), (5, 6, 10))
