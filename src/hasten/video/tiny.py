"""Tiny random diffusers video transformers and pipelines (no downloads) for tests and demos."""

from __future__ import annotations

import torch

from hasten.attn.layout import Dims

MODELS = ("hunyuanvideo", "wan", "cogvideox")
TEXT_DIM = 16


def _check(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODELS)}")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ImportError(
            "hasten.video needs diffusers 0.42.1: pip install -e '.[video]'"
        ) from None


def tiny_transformer(
    model: str, *, heads: int = 2, head_dim: int = 16, layers: int = 2, seed: int = 0
) -> torch.nn.Module:
    """A randomly initialized transformer of ``model``'s class with ``layers`` attention layers.

    HunyuanVideo splits them into double- and single-stream blocks (at least one of each).
    """
    _check(model)
    torch.manual_seed(seed)
    if model == "hunyuanvideo":
        from diffusers import HunyuanVideoTransformer3DModel

        # RoPE splits the head dim over (t, h, w); the rest of the config is the smallest.
        axes = (head_dim - 2 * (head_dim * 3 // 8), head_dim * 3 // 8, head_dim * 3 // 8)
        double = max(1, layers // 2)
        return HunyuanVideoTransformer3DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            num_layers=double,
            num_single_layers=max(1, layers - double),
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=TEXT_DIM,
            pooled_projection_dim=8,
            rope_axes_dim=axes,
        )
    if model == "wan":
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            in_channels=4,
            out_channels=4,
            text_dim=TEXT_DIM,
            freq_dim=16,
            ffn_dim=32,
            num_layers=layers,
            rope_max_seq_len=64,
        )
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        time_embed_dim=4,
        text_embed_dim=TEXT_DIM,
        num_layers=layers,
        sample_width=16,
        sample_height=16,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=8,
        use_rotary_positional_embeddings=True,
    )


def patch_size(transformer) -> Dims:
    """(t, h, w) patch of a diffusers video transformer."""
    c = transformer.config
    if isinstance(c.patch_size, list | tuple):
        return tuple(c.patch_size)  # type: ignore[return-value]
    return (getattr(c, "patch_size_t", None) or 1, c.patch_size, c.patch_size)


def latent_shape(transformer, canvas: Dims) -> Dims:
    """The VAE latent (frames, height, width) whose patchified tokens form ``canvas``."""
    pt, ph, pw = patch_size(transformer)
    return (canvas[0] * pt, canvas[1] * ph, canvas[2] * pw)


def transformer_inputs(
    model: str,
    transformer,
    canvas: Dims,
    *,
    batch: int = 1,
    text_tokens: int = 8,
    text_lengths=None,
    timestep: float = 500.0,
    seed: int = 0,
    dtype=torch.float32,
    device="cpu",
) -> dict:
    """Random keyword arguments for one ``transformer(**inputs)`` call at ``canvas``."""
    _check(model)
    g = torch.Generator().manual_seed(seed)
    c = transformer.config
    T, H, W = latent_shape(transformer, canvas)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    t = torch.full((batch,), float(timestep), device=device)
    text = rand(batch, text_tokens, c.text_embed_dim if model != "wan" else c.text_dim)
    if model == "cogvideox":
        out = {"hidden_states": rand(batch, T, c.in_channels, H, W)}
        out.update(encoder_hidden_states=text, timestep=t)
        return out
    out = {"hidden_states": rand(batch, c.in_channels, T, H, W), "timestep": t}
    out["encoder_hidden_states"] = text
    if model == "hunyuanvideo":
        mask = torch.ones(batch, text_tokens, dtype=torch.bool, device=device)
        if text_lengths is not None:
            for b, n in enumerate(text_lengths):
                mask[b, n:] = False
        out["encoder_attention_mask"] = mask
        out["pooled_projections"] = rand(batch, c.pooled_projection_dim)
        out["guidance"] = torch.full((batch,), 6000.0, device=device, dtype=dtype)
    return out


def tiny_pipeline(model: str, transformer):
    """The model's diffusers pipeline around ``transformer``, with no text encoders or VAE.

    Call it with ``prompt_embeds`` (see :func:`pipeline_inputs`) and ``output_type="latent"``.
    """
    _check(model)
    from diffusers import FlowMatchEulerDiscreteScheduler

    if model == "hunyuanvideo":
        from diffusers import HunyuanVideoPipeline

        return HunyuanVideoPipeline(
            tokenizer=None,
            text_encoder=None,
            tokenizer_2=None,
            text_encoder_2=None,
            vae=None,
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        )
    if model == "wan":
        from diffusers import WanPipeline

        return WanPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=None,
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        )
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    return CogVideoXPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(timestep_spacing="trailing"),
    )


def pipeline_inputs(
    model: str,
    transformer,
    canvas: Dims,
    *,
    steps: int = 4,
    seed: int = 0,
    text_tokens: int = 8,
    text_length: int | None = None,
) -> dict:
    """Keyword arguments for a tiny pipeline's ``__call__``: random prompt embeddings (seeded),
    and a height, width and frame count whose latent patchifies to ``canvas``.

    The pipelines assume the VAE's 8x spatial and 4x temporal compression when it is absent.
    """
    _check(model)
    T, H, W = latent_shape(transformer, canvas)
    g = torch.Generator().manual_seed(seed)
    dim = transformer.config.text_dim if model == "wan" else transformer.config.text_embed_dim
    embeds = torch.randn(1, text_tokens, dim, generator=g)
    out = dict(
        height=8 * H,
        width=8 * W,
        num_frames=4 * (T - 1) + 1,
        num_inference_steps=steps,
        prompt_embeds=embeds,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
    )
    if model == "hunyuanvideo":
        mask = torch.ones(1, text_tokens, dtype=torch.bool)
        mask[:, text_tokens if text_length is None else text_length :] = False
        out.update(pooled_prompt_embeds=torch.randn(1, 8, generator=g), prompt_attention_mask=mask)
    else:
        out.update(negative_prompt_embeds=torch.randn(1, text_tokens, dim, generator=g))
        out.update(guidance_scale=5.0)
    return out
