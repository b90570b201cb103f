"""Per-transformer state: the denoising step and canvas of the current call, and its attention."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hasten.attn.layout import Dims, VideoLayout
from hasten.video.attention import video_attention
from hasten.video.strategy import Strategy

#: Runtimes by id, so the compiled graph's custom op can find its layer's state.
RUNTIMES: dict[int, SparseRuntime] = {}
_IDS = itertools.count()


@dataclass(frozen=True)
class ForwardInfo:
    """What one transformer call tells the attention: latent canvas, timestep, text validity.

    ``text_lengths`` holds the valid (unpadded) text tokens per sample, ``None`` when every
    text token is valid.
    """

    canvas: Dims
    timestep: float
    text_lengths: tuple[int, ...] | None = None


#: ``recorder(step, layer, q, k, v, out, layout, text_lengths)``, called after each layer.
Recorder = Callable[..., None]


class SparseRuntime:
    """The state shared by a transformer's sparse attention processors.

    The step advances when a transformer call brings a smaller timestep than the last one
    (the pipelines' schedulers count down), stays when it repeats (classifier-free guidance
    as a second call) and restarts at 0 when it grows (a new generation). :meth:`pin_step`
    overrides that, :meth:`reset` restarts the count.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        model: str,
        layers: int,
        heads: int,
        text_first: bool | None,
        backend: str = "auto",
    ) -> None:
        self.strategy, self.model, self.layers, self.heads = strategy, model, layers, heads
        self.text_first, self.backend = text_first, backend
        self.step = 0
        self.info: ForwardInfo | None = None
        self.recorder: Recorder | None = None
        #: ``(step, layer, pattern)`` of every attention call while it is a list (for checks).
        self.trace: list | None = None
        #: Set by :func:`hasten.parallel.sequence_parallel_transformer`: the attention then
        #: sees one rank's piece of the video and exchanges it with the other ranks.
        self.exchange = None
        self._last_t: float | None = None
        self._pinned: int | None = None
        self._checked: set[Dims] = set()
        self.id = next(_IDS)
        RUNTIMES[self.id] = self

    # ---- the step ------------------------------------------------------------------------
    def pin_step(self, step: int | None) -> None:
        """Run every following call as denoising ``step`` (``None``: count from timesteps)."""
        if step is not None and (not isinstance(step, int) or step < 0):
            raise ValueError(f"step must be an int >= 0 or None, got {step!r}")
        self._pinned = step
        if step is not None:
            self.step = step

    def reset(self) -> None:
        """Start counting steps from 0 at the next call."""
        self.step, self._last_t = 0, None

    def begin(self, info: ForwardInfo) -> None:
        """Called before each transformer forward with what that call is about."""
        t = info.timestep
        if self._pinned is not None:
            self.step = self._pinned
        elif self._last_t is None or t > self._last_t:
            self.step = 0
        elif t < self._last_t:
            self.step += 1
        self._last_t = t
        if info.canvas not in self._checked:
            self.strategy.validate_canvas(info.canvas, self.layers)
            self._checked.add(info.canvas)
        self.info = info

    # ---- attention -----------------------------------------------------------------------
    def layout(self, seq_len: int) -> VideoLayout:
        if self.info is None:
            raise RuntimeError(
                "sparse attention ran before the transformer's forward: call the transformer "
                "(or its pipeline) itself, not its attention modules"
            )
        canvas = self.info.canvas
        text = seq_len - math.prod(canvas)
        if text < 0 or (text and self.text_first is None):
            raise ValueError(
                f"the attention sees {seq_len} tokens but canvas {canvas} has "
                f"{math.prod(canvas)} video tokens"
            )
        return self.strategy.layout(canvas, text_tokens=text, text_first=bool(self.text_first))

    def rule(self, layer: int, layout: VideoLayout, batch: int):
        """``layer``'s pattern at the current step and the text lengths (``None``: no padding)."""
        pattern = self.strategy.pattern(self.step, layer)
        if self.trace is not None:
            self.trace.append((self.step, layer, pattern))
        lengths = self.info.text_lengths
        if lengths is not None:
            lengths = layout.check_text_lengths(lengths, batch)
            if bool((lengths == layout.text_tokens).all()):
                lengths = None
        return pattern, lengths

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Attention of ``layer`` on raster-order ``[B, S, H, D]`` tensors."""
        if self.exchange is not None:
            # Sequence parallel: q, k, v hold this rank's piece of the video (tile-major).
            return self.exchange.attend(self, layer, q, k, v)
        layout = self.layout(q.shape[1])
        pattern, lengths = self.rule(layer, layout, q.shape[0])
        out = video_attention(q, k, v, layout, pattern, lengths, backend=self.backend)
        if self.recorder is not None:
            self.recorder(self.step, layer, q, k, v, out, layout, lengths)
        return out

    def close(self) -> None:
        RUNTIMES.pop(self.id, None)

    def __repr__(self) -> str:
        return (
            f"SparseRuntime({self.model}, {self.layers} layers x {self.heads} heads, "
            f"{self.strategy.kind}, step {self.step})"
        )


@torch.library.custom_op("hasten::video_attention", mutates_args=())
def _video_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, runtime: int, layer: int
) -> torch.Tensor:
    # Opaque to the compiler: the step lives in Python state, so a new step needs no recompile.
    return RUNTIMES[runtime].attend(layer, q, k, v).contiguous()


@_video_attention_op.register_fake
def _(q, k, v, runtime, layer):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def attend(runtime: SparseRuntime, layer: int, q, k, v) -> torch.Tensor:
    """What processors call: the runtime directly, or through the custom op when compiling."""
    if torch.compiler.is_compiling():
        return _video_attention_op(q, k, v, runtime.id, layer)
    return runtime.attend(layer, q, k, v)
