"""A small text-conditioned 3D DiT whose self-attention is hasten.attn's SparseAttention."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hasten.attn import Dense, Pattern, SparseAttention, VideoLayout
from hasten.toyvideo.world import TEXT_TOKENS, VOCAB, WorldConfig

PREDICTIONS = ("x0", "velocity")
X0_T_MIN = 0.05


@dataclass(frozen=True)
class DiTConfig:
    """Shape of the model; the world's clip size and the attention tile come with it."""

    frames: int = 16
    size: int = 64
    patch: tuple[int, int, int] = (2, 8, 8)
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    #: Attention tile in latent tokens; ``None`` is one whole latent frame, so kernel chunks
    #: align with frames (FrameTiles) and STA windows count frames.
    tile: tuple[int, int, int] | None = None
    #: What the output layer predicts; ``forward`` always returns the velocity. ``"x0"``
    #: predicts the clean clip: a 2x8x8 patch has 384 values but the model is 192 wide, so
    #: a velocity head cannot carry each token's noise through and samples keep it
    #: (JiT, Li & He 2025). Checkpoints without the field are ``"velocity"``.
    prediction: str = "x0"

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction {self.prediction!r} is not one of {list(PREDICTIONS)}")
        object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
        if self.tile is not None:
            object.__setattr__(self, "tile", tuple(int(t) for t in self.tile))
        for name, n, p in zip(
            ("frames", "size", "size"), (self.frames, self.size, self.size), self.patch, strict=True
        ):
            if n % p:
                raise ValueError(
                    f"patch {self.patch} does not divide the clip ({self.frames} frames of "
                    f"{self.size}x{self.size}) along {name}; pick a patch that divides it"
                )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")

    @property
    def latent(self) -> tuple[int, int, int]:
        """Token canvas (T, H, W) after patchify."""
        pt, ph, pw = self.patch
        return (self.frames // pt, self.size // ph, self.size // pw)

    @property
    def patch_dim(self) -> int:
        return 3 * math.prod(self.patch)

    @property
    def layout(self) -> VideoLayout:
        tile = self.tile or (1, *self.latent[1:])
        return VideoLayout(self.latent, tile, text_tokens=TEXT_TOKENS)

    @property
    def world(self) -> WorldConfig:
        """The default world scaled to this clip size (same look at any resolution)."""
        base = WorldConfig()
        s, v = self.size / base.size, (base.frames - 1) / (self.frames - 1)
        return WorldConfig(
            frames=self.frames,
            size=self.size,
            min_radius=base.min_radius * s,
            max_radius=base.max_radius * s,
            min_speed=base.min_speed * s * v,
            max_speed=base.max_speed * s * v,
            max_drift=base.max_drift * s * v,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of ``t`` in [0, 1] (scaled to the usual 0..1000 range)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN modulation and q/k RMS norm."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.RMSNorm(d // cfg.heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(d // cfg.heads, eps=1e-6)
        self.attn = SparseAttention(cfg.layout, Dense())
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d)
        )
        # Per-block offset of the shared modulation (adaLN-single, as in PixArt-alpha).
        self.mod_bias = nn.Parameter(torch.randn(6, d) / d**0.5)
        #: The last attention output (before the projection), kept when ``record`` is set.
        self.record = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.mod_bias).unbind(1)
        B, S, D = x.shape
        h = self.norm1(x) * (1 + scale1[:, None]) + shift1[:, None]
        qkv = self.qkv(h).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # The norms may upcast under autocast; the kernels want one dtype for q, k, v.
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        a = self.attn(q, k, v)
        if self.record:
            self.last_attention = a
        a = a.transpose(1, 2).reshape(B, S, D)
        x = x + gate1[:, None] * self.proj(a)
        h = self.norm2(x) * (1 + scale2[:, None]) + shift2[:, None]
        return x + gate2[:, None] * self.mlp(h)


class VideoDiT(nn.Module):
    """Predicts the flow-matching velocity of a clip ``[B, 3, T, H, W]`` at time ``t``.

    Video tokens run through the blocks in the attention layout's tile-major order, the
    caption's word tokens after them (joint attention, as in HunyuanVideo), so any
    hasten.attn pattern can be set per layer with :meth:`set_patterns`.
    """

    def __init__(self, cfg: DiTConfig = DiTConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        d, layout = cfg.dim, cfg.layout
        self.patch_in = nn.Linear(cfg.patch_dim, d)
        self.pos = nn.Parameter(torch.randn(1, layout.video_tokens, d) * 0.02)
        self.word = nn.Embedding(len(VOCAB), d)
        self.text_pos = nn.Parameter(torch.randn(1, TEXT_TOKENS, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.text_pool = nn.Linear(d, d)
        self.mod = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.out_mod = nn.Linear(d, 2 * d)
        self.patch_out = nn.Linear(d, cfg.patch_dim)
        for lin in (self.mod[1], self.out_mod, self.patch_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.register_buffer("to_tile", layout.tile_to_raster_index(), persistent=False)
        self.register_buffer("to_raster", layout.raster_to_tile_index(), persistent=False)

    # ---- attention patterns ------------------------------------------------------------
    @property
    def patterns(self) -> list[Pattern]:
        return [b.attn.pattern for b in self.blocks]

    def set_patterns(self, patterns: Pattern | Sequence[Pattern]) -> None:
        """One pattern for every layer, or one per layer."""
        if isinstance(patterns, Pattern):
            patterns = [patterns] * len(self.blocks)
        patterns = list(patterns)
        if len(patterns) != len(self.blocks):
            raise ValueError(
                f"got {len(patterns)} patterns for {len(self.blocks)} layers; give one per "
                f"layer or a single pattern"
            )
        # replace() keeps the attention module's kind (e.g. sequence-parallel).
        for b, p in zip(self.blocks, patterns, strict=True):
            b.attn = b.attn.replace(pattern=p)

    def set_backend(self, backend: str) -> None:
        for b in self.blocks:
            b.attn = b.attn.replace(backend=backend)

    # ---- patchify ----------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> ``[B, S, patch_dim]`` in raster order."""
        B = x.shape[0]
        (pt, ph, pw), (lt, lh, lw) = self.cfg.patch, self.cfg.latent
        x = x.reshape(B, 3, lt, pt, lh, ph, lw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(B, lt * lh * lw, -1)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        (pt, ph, pw), (lt, lh, lw) = self.cfg.patch, self.cfg.latent
        x = tokens.reshape(B, lt, lh, lw, 3, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(B, 3, lt * pt, lh * ph, lw * pw)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Velocity for clips ``x``, times ``t`` ``[B]`` in [0, 1], word ids ``[B, 5]``."""
        if text.shape[-1] != TEXT_TOKENS:
            raise ValueError(f"text must be [B, {TEXT_TOKENS}] word ids, got {tuple(text.shape)}")
        video = self.patch_in(self.patchify(x)) + self.pos
        video = video[:, self.to_tile]  # raster -> tile-major, once for all blocks
        words = self.word(text) + self.text_pos
        c = self.time_mlp(timestep_embedding(t, 256).to(video.dtype))
        c = c + self.text_pool(words.mean(dim=1))
        mod = self.mod(c).view(-1, 6, self.cfg.dim)
        h = torch.cat([video, words], dim=1)
        for block in self.blocks:
            h = block(h, mod)
        shift, scale = self.out_mod(F.silu(c)).chunk(2, dim=-1)
        h = self.norm_out(h[:, : video.shape[1]]) * (1 + scale[:, None]) + shift[:, None]
        out = self.unpatchify(self.patch_out(h)[:, self.to_raster])
        if self.cfg.prediction == "velocity":
            return out
        # x_t = (1 - t) x0 + t noise, so v = noise - x0 = (x_t - x0) / t. The floor keeps
        # the loss weight 1/t^2 on x0 errors bounded near the data end (JiT clips it too);
        # it leaves ~1% of the noise after a 50-step sampler's last step.
        tt = t.to(out.dtype).clamp_min(X0_T_MIN).reshape(-1, 1, 1, 1, 1)
        return (x.to(out.dtype) - out) / tt


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
