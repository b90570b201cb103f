"""Trace generation with transformers' ``generate``: the serving model's sampling on a GPU."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from hasten.serve.generate import Draw, GenerateConfig, prompt_ids
from hasten.serve.request import Request


def batches_by_tokens(
    items: list[tuple[list[int], Any]], max_tokens: int, cap: int, budget: int
) -> list[list[tuple[list[int], Any]]]:
    """Group ``(ids, payload)`` items, shortest prompt first, so each batch's padded KV cache
    (batch x (longest prompt + ``max_tokens``)) stays under ``budget`` and ``cap`` rows.

    Sorting by length keeps left padding (wasted KV and attention) small.
    """
    order = sorted(items, key=lambda it: len(it[0]))
    out: list[list[tuple[list[int], Any]]] = []
    cur: list[tuple[list[int], Any]] = []
    for item in order:
        width = len(item[0]) + max_tokens
        if cur and (len(cur) >= cap or (len(cur) + 1) * width > budget):
            out.append(cur)
            cur = []
        cur.append(item)
    if cur:
        out.append(cur)
    return out


def output_length(tokens: list[int], eos: set[int]) -> tuple[int, str]:
    """Tokens produced up to and including the first end token (as vLLM counts them)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return i + 1, "stop"
    return len(tokens), "length"


def transformers_draws(
    todo: list[tuple[Request, int]],
    cfg: GenerateConfig,
    meta: dict,
    log: Callable[[str], None] = print,
) -> Iterator[list[Draw]]:
    """Sample every ``(request, sample)`` in ``todo`` with ``model.generate``, batch by batch.

    Same model, chat template, prompt cut and sampling as the vLLM path; sample 0 of every
    prompt is drawn before any sample 1, so a run stopped by its time budget leaves whole
    samples behind.
    """
    import json
    from pathlib import Path

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hasten.serve.models import smollm2_checkpoint

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = cfg.model or str(smollm2_checkpoint(log=log))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # bf16 on a GPU, as vLLM serves a float32 checkpoint by default; float32 on CPU.
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    meta.update(
        transformers=transformers.__version__,
        torch=torch.__version__,
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        dtype=str(dtype).removeprefix("torch."),
    )
    Path(f"{cfg.out}.meta.json").write_text(json.dumps(meta, indent=1))
    budget = cfg.max_model_len - cfg.max_tokens
    eos_cfg = model.generation_config.eos_token_id
    eos = {eos_cfg} if isinstance(eos_cfg, int) else set(eos_cfg or ())
    if tok.eos_token_id is not None:
        eos.add(tok.eos_token_id)
    items = [(prompt_ids(tok, r, budget), (r, s)) for r, s in todo]
    # Pad with a token every templated prompt already holds (the chat template's first
    # token): the repetition penalty treats the whole input as "seen", so any other pad id
    # would be penalized in padded rows only and bias their lengths.
    first = items[0][0][0][0]
    pad = first if all(first in ids for (ids, _), _ in items) else tok.pad_token_id
    for sample in sorted({s for _, s in todo}):
        group = [((ids, cut), rs) for (ids, cut), rs in items if rs[1] == sample]
        keyed = [(ids, (cut, rs)) for (ids, cut), rs in group]
        for k, batch in enumerate(
            batches_by_tokens(keyed, cfg.max_tokens, cfg.batch, cfg.max_batch_tokens)
        ):
            torch.manual_seed(cfg.seed * 1_000_003 + sample * 10_007 + k)
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for i, (ids, _) in enumerate(batch):
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                mask[i, width - len(ids) :] = 1
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=True,
                    max_new_tokens=cfg.max_tokens,
                    # vLLM applies no top-k unless asked; transformers defaults to 50.
                    top_k=0,
                    pad_token_id=pad,
                    eos_token_id=sorted(eos),
                    **cfg.sampling,
                )
            gen = out[:, width:].tolist()
            draws: list[Draw] = []
            for (ids, (cut, (r, s))), toks in zip(batch, gen, strict=True):
                n, finish = output_length(toks, eos)
                draws.append((r, s, len(ids), n, finish, cut))
            yield draws
