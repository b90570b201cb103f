"""Training-free mask search: per-head STA windows with the least error against dense attention.

Following STA (arXiv 2502.04507, section 3.3): run the dense trajectory on a few prompts or
seeds; at every (step, layer) after the dense first steps, compute each candidate window's
attention on the same q, k, v and its per-head mean squared error to the dense output;
average over prompts and pick, per (step, layer, head), the candidate with the lowest error.
With a sparsity budget the pick trades error for sparsity instead (see :func:`select`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hasten.attn.layout import Dims, VideoLayout
from hasten.attn.patterns import SlidingTile, _window_tuple
from hasten.video.attention import is_full, video_attention
from hasten.video.integrate import disable_sparse_attention, enable_sparse_attention
from hasten.video.presets import HUNYUAN_CANDIDATES
from hasten.video.strategy import DenseStrategy, PerHeadStrategy

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class CalibrationConfig:
    """What the search tries: candidate windows (tiles), steps, and the selection rule.

    ``steps`` is the number of denoising steps each run makes; the first ``dense_steps``
    stay dense and are not searched. ``budget``, if given, is the overall attention sparsity
    to reach, over all steps (dense ones count as 0), layers and heads; the full window
    joins the candidates then. Without it every head takes its lowest-error sparse candidate.
    """

    candidates: tuple[Dims, ...] = HUNYUAN_CANDIDATES
    steps: int = 50
    dense_steps: int = 15
    prompts: int = 2
    tile: Dims = (6, 8, 8)
    budget: float | None = None

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("candidates must list at least one window, e.g. ((3, 3, 5),)")
        cands = tuple(_window_tuple(c, f"candidates[{i}]") for i, c in enumerate(self.candidates))
        if len(set(cands)) != len(cands):
            raise ValueError(f"candidates repeat a window: {cands}")
        object.__setattr__(self, "candidates", cands)
        object.__setattr__(self, "tile", tuple(int(x) for x in self.tile))
        if not 0 <= self.dense_steps < self.steps:
            raise ValueError(
                f"dense_steps must be in 0..steps-1 = 0..{self.steps - 1}, got {self.dense_steps}"
            )
        if self.prompts < 1:
            raise ValueError(f"prompts must be >= 1, got {self.prompts}")
        if self.budget is not None and not 0 < self.budget < 1:
            raise ValueError(f"budget is a sparsity in (0, 1), e.g. 0.58; got {self.budget}")
        if self.budget is not None and self.budget >= self.searched_steps / self.steps:
            # Dense steps count as 0: no window can make up for them (checked before running).
            raise ValueError(
                f"budget {self.budget} cannot be reached with {self.dense_steps} of "
                f"{self.steps} steps dense (at most {self.searched_steps / self.steps:.3f}); "
                f"lower it or use fewer dense steps"
            )

    @property
    def searched_steps(self) -> int:
        return self.steps - self.dense_steps

    def fingerprint(self, model: str, layers: int, heads: int) -> dict:
        """What a checkpoint must agree on to be resumed (more prompts may be added)."""
        return {
            "model": model,
            "layers": layers,
            "heads": heads,
            "candidates": [list(c) for c in self.candidates],
            "steps": self.steps,
            "dense_steps": self.dense_steps,
            "tile": list(self.tile),
        }


@dataclass(frozen=True)
class Calibration:
    """The search's result: errors ``[searched steps, layers, candidates, heads]`` (MSE to
    dense, averaged over prompts), each candidate's sparsity, and the chosen strategy."""

    config: CalibrationConfig
    canvas: Dims
    candidates: tuple[Dims, ...]
    errors: torch.Tensor
    candidate_sparsity: tuple[float, ...]
    strategy: PerHeadStrategy
    model: str = ""
    choice: torch.Tensor = field(repr=False, default=None)

    @property
    def sparsity(self) -> float:
        """Overall attention sparsity of the strategy (dense steps included as 0)."""
        sp = torch.tensor(self.candidate_sparsity, dtype=torch.float64)
        return float(sp[self.choice].sum()) / (self.config.steps * self.choice[0].numel())

    def report(self) -> dict:
        """Sparsity per layer, error per candidate, and what was chosen how often."""
        sp = torch.tensor(self.candidate_sparsity, dtype=torch.float64)
        S = self.config.steps
        per_layer = sp[self.choice].sum(dim=(0, 2)) / (S * self.choice.shape[2])
        err = self.errors.to(torch.float64)
        chosen = torch.gather(err, 2, self.choice.unsqueeze(2)).squeeze(2)
        counts = torch.bincount(self.choice.reshape(-1), minlength=len(self.candidates))
        return {
            "model": self.model,
            "canvas": list(self.canvas),
            "tile": list(self.config.tile),
            "steps": S,
            "dense_steps": self.config.dense_steps,
            "prompts": self.config.prompts,
            "budget": self.config.budget,
            "sparsity": self.sparsity,
            "sparsity_per_layer": per_layer.tolist(),
            "candidates": [
                {
                    "window": list(c),
                    "sparsity": self.candidate_sparsity[i],
                    "mean_error": float(err[:, :, i].mean()),
                    "error_per_layer": err[:, :, i].mean(dim=(0, 2)).tolist(),
                    "chosen": int(counts[i]),
                }
                for i, c in enumerate(self.candidates)
            ],
            "chosen_mean_error": float(chosen.mean()),
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``strategy.json``, ``report.json`` and ``heatmap.png`` under ``out_dir``."""
        import json

        from hasten.video.report import draw_calibration

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"strategy": self.strategy.save(out / "strategy.json")}
        paths["report"] = out / "report.json"
        paths["report"].write_text(json.dumps(self.report(), indent=1) + "\n")
        paths["heatmap"] = draw_calibration(self, out / "heatmap.png")
        return paths


def select(
    errors: torch.Tensor,
    sparsity: Sequence[float],
    *,
    steps: int,
    budget: float | None = None,
) -> torch.Tensor:
    """Per entry of ``errors[..., candidates, heads]``, the index of the chosen candidate.

    Without a budget: the lowest error among candidates with sparsity > 0. With one: the
    choice minimizing ``error - lam * sparsity`` per entry, with the smallest ``lam`` whose
    overall sparsity (over ``steps`` steps, of which those not in ``errors`` are dense)
    reaches ``budget``: the least total error for that sparsity among such trade-offs.
    """
    sp = torch.tensor(sparsity, dtype=torch.float64)
    err = errors.to(torch.float64).movedim(-2, -1)  # [..., heads, candidates]
    if budget is None:
        sparse = sp > 0
        if not bool(sparse.any()):
            raise ValueError(
                "every candidate window covers the whole tile grid (sparsity 0); add smaller "
                "windows, or pass a budget to trade error for sparsity"
            )
        return err.masked_fill(~sparse, math.inf).argmin(dim=-1)
    entries = err[..., 0].numel()
    total = entries * steps / err.shape[0]  # entries over all steps, dense ones too

    def achieved(lam: float) -> tuple[torch.Tensor, float]:
        pick = (err - lam * sp).argmin(dim=-1)
        return pick, float(sp[pick].sum()) / total

    reach = float(sp.max()) * entries / total
    if budget > reach + 1e-12:
        raise ValueError(
            f"budget {budget:.3f} is out of reach: with {steps - err.shape[0]} dense steps and "
            f"the sparsest candidate at {float(sp.max()):.3f}, at most {reach:.3f} is possible"
        )
    hi = max(float(err.max()), 1e-30)
    while achieved(hi)[1] < budget:
        hi *= 2
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if achieved(mid)[1] < budget else (lo, mid)
    return achieved(hi)[0]


class _Search:
    """The recorder: candidates' errors per (step, layer, head), handed on step by step.

    A step's errors go to ``on_step`` each time a transformer call has been through every
    layer, averaged over the calls so far (classifier-free guidance may make two per step),
    so a run cut short keeps every step it finished.
    """

    def __init__(self, config: CalibrationConfig, layers: int, heads: int, backend: str):
        self.config, self.layers, self.heads, self.backend = config, layers, heads, backend
        self.skip: set[int] = set()
        self.layout: VideoLayout | None = None
        self.on_step: Callable[[int, torch.Tensor], None] | None = None
        self.start()

    def start(self, skip=()) -> None:
        """Begin a run; steps in ``skip`` are done already."""
        self.skip = set(skip)
        self._step: int | None = None
        self._sums = torch.zeros(self.layers, len(self.config.candidates), self.heads).double()
        self._calls = 0

    def __call__(self, step, layer, q, k, v, out, layout, text_lengths) -> None:
        c = self.config
        if step >= c.steps:
            raise ValueError(
                f"the run made more than steps={c.steps} denoising steps; set steps to the "
                f"number of inference steps the run uses"
            )
        if step < c.dense_steps or step in self.skip:
            return
        if step != self._step:
            self._step, self._calls = step, 0
            self._sums.zero_()
        if self.layout is None:
            for w in c.candidates:
                SlidingTile(w).validate(layout)
            self.layout = layout
        elif layout != self.layout:
            raise ValueError(
                f"this run's attention layout ({layout}) differs from the one the search "
                f"started with ({self.layout}); use one canvas and text length for all runs"
            )
        ref = out.detach().float()
        for i, w in enumerate(c.candidates):
            pattern = SlidingTile(w)
            cand = video_attention(q, k, v, layout, pattern, text_lengths, backend=self.backend)
            self._sums[layer, i] += ((cand.float() - ref) ** 2).mean(dim=(0, 1, 3)).double().cpu()
        self._calls += 1
        if layer == self.layers - 1 and self.on_step is not None:
            self.on_step(step, self._sums / (self._calls / self.layers))


def _load_checkpoint(path: Path | None, fingerprint: dict) -> tuple[dict, VideoLayout | None]:
    if path is None or not path.is_file():
        return {}, None
    state = torch.load(path, weights_only=True)
    if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint {path} was made with other settings ({state.get('fingerprint')}); "
            f"delete it, pass another path, or restart (hasten calibrate --restart)"
        )
    done = {int(p): {int(s): t for s, t in steps.items()} for p, steps in state["done"].items()}
    canvas, tile, text, first = state["layout"]
    return done, VideoLayout(tuple(canvas), tuple(tile), text_tokens=text, text_first=first)


def _save_checkpoint(path: Path, fingerprint: dict, done: dict, layout: VideoLayout) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "done": done}
    state["layout"] = [
        list(layout.canvas),
        list(layout.tile),
        layout.text_tokens,
        layout.text_first,
    ]
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save leaves the previous checkpoint


def calibrate(
    transformer: torch.nn.Module,
    run: Callable[[int], object],
    config: CalibrationConfig,
    *,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> Calibration:
    """Search per-head windows for ``transformer`` over ``config.prompts`` runs.

    ``run(i)`` makes the ``i``-th dense trajectory (a pipeline call on prompt or seed ``i``,
    ``config.steps`` steps). With ``checkpoint`` the errors of every finished (run, step)
    are saved there as they come, and a rerun skips them: an interrupted search resumes.
    """
    runtime = enable_sparse_attention(transformer, DenseStrategy(tile=config.tile))
    try:
        model = runtime.model
        fp = config.fingerprint(model, runtime.layers, runtime.heads)
        ck = None if checkpoint is None else Path(checkpoint)
        done, saved_layout = _load_checkpoint(ck, fp)
        search = _Search(config, runtime.layers, runtime.heads, backend)
        search.layout = saved_layout
        runtime.recorder = search
        total = config.prompts * config.searched_steps
        already = sum(len(done.get(p, {})) for p in range(config.prompts))
        bar = tqdm(
            total=total, initial=already, desc="calibrate", unit="step", disable=not progress
        )
        for p in range(config.prompts):
            finished = done.setdefault(p, {})
            if len(finished) == config.searched_steps:
                continue
            search.start(skip=finished)

            def keep(step, errs, finished=finished):
                if step not in finished:
                    bar.update(1)
                finished[step] = errs.clone()
                if ck is not None:
                    _save_checkpoint(ck, fp, done, search.layout)

            search.on_step = keep
            runtime.reset()
            run(p)
            missing = sorted(set(range(config.dense_steps, config.steps)) - set(finished))
            if missing:
                raise ValueError(
                    f"run({p}) made no denoising step {missing[0]} (of steps={config.steps}); "
                    f"set steps to the number of inference steps the run uses"
                )
        bar.close()
    finally:
        disable_sparse_attention(transformer)
    return _result(config, done, search.layout, runtime.layers, runtime.heads, model)


def _result(config, done, layout: VideoLayout, layers, heads, model) -> Calibration:
    per_prompt = [
        torch.stack([done[p][s] for s in range(config.dense_steps, config.steps)])
        for p in range(config.prompts)
    ]
    errors = torch.stack(per_prompt).mean(dim=0)  # [steps, layers, candidates, heads]
    candidates = list(config.candidates)
    if config.budget is not None and not any(is_full(SlidingTile(c), layout) for c in candidates):
        # The budget trades error for sparsity: the full window (error 0) must be on offer.
        candidates.append(layout.grid)
        errors = torch.cat([errors, torch.zeros_like(errors[:, :, :1])], dim=2)
    sparsity = tuple(float(SlidingTile(c).sparsity(layout)) for c in candidates)
    choice = select(errors, sparsity, steps=config.steps, budget=config.budget)
    table = tuple(
        tuple(tuple(candidates[int(i)] for i in heads_row) for heads_row in layer_rows)
        for layer_rows in choice.tolist()
    )
    strategy = PerHeadStrategy(
        tile=config.tile,
        dense_steps=config.dense_steps,
        canvas=layout.canvas,
        windows=table,
        meta={
            "model": model,
            "calibration": {
                "candidates": [list(c) for c in candidates],
                "prompts": config.prompts,
                "budget": config.budget,
            },
        },
    )
    return Calibration(
        config=config,
        canvas=layout.canvas,
        candidates=tuple(candidates),
        errors=errors,
        candidate_sparsity=sparsity,
        strategy=strategy,
        model=model,
        choice=choice,
    )
