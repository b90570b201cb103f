"""The README's and docs' Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    *(ROOT / "docs" / name for name in ("attention.md", "parallel.md", "reference_video.md")),
]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_examples_run(path):
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{path.name} has no python examples"
    namespace: dict = {}
    for block in blocks:  # one namespace per document: later blocks build on earlier ones
        exec(compile(block, str(path), "exec"), namespace)
