"""docs/video.md's Python examples run as written (tiny random models, CPU)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "video.md"


def test_video_doc_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["latents"].shape[2:] == (5, 6, 8)
    kinds = sorted({(s, type(p).__name__) for s, _, p in namespace["runtime"].trace})
    assert kinds == [(0, "Dense"), (1, "SlidingTile"), (2, "SlidingTile")]  # as the doc prints
