"""The reference DiT: patchify, patterns plugged in through hasten.attn, training, checkpoints."""

from __future__ import annotations

import pytest
import torch

from hasten.attn import Dense, FrameTiles, SlidingTile
from hasten.toyvideo.checkpoint import load_model, save_model
from hasten.toyvideo.flow import flow_matching_loss
from hasten.toyvideo.loop import Budget
from hasten.toyvideo.model import DiTConfig, VideoDiT
from hasten.toyvideo.train import TrainConfig, train_teacher
from hasten.toyvideo.world import attributes_to_tokens, sample_clips

from .factories import TINY, tiny_model


def _inputs(n=2, seed=0):
    x, attrs = sample_clips(n, seed, TINY.world)
    return x, torch.rand(n), attributes_to_tokens(attrs)


def test_patchify_round_trips_and_orders_tokens_frame_major():
    model = tiny_model()
    x = torch.randn(2, 3, 8, 32, 32)
    tokens = model.patchify(x)
    assert tokens.shape == (2, 4 * 4 * 4, 3 * 2 * 8 * 8)
    assert torch.equal(model.unpatchify(tokens), x)
    # Token 1 is latent (0, 0, 1): frames 0-1, rows 0-7, columns 8-15.
    assert torch.equal(tokens[0, 1].view(3, 2, 8, 8), x[0, :, 0:2, 0:8, 8:16])


def test_output_shape_and_the_attention_is_hastens():
    model = tiny_model()
    x, t, text = _inputs()
    assert model(x, t, text).shape == x.shape
    assert all(type(b.attn).__name__ == "SparseAttention" for b in model.blocks)
    assert model.cfg.layout.seq_len == 64 + 5


def test_patterns_change_the_output_and_full_frame_tiles_equal_dense():
    model = tiny_model()
    x, t, text = _inputs()
    with torch.no_grad():
        dense = model(x, t, text)
        model.set_patterns(FrameTiles(4))  # k = T latent frames keeps everything
        full = model(x, t, text)
        model.set_patterns([FrameTiles(0), Dense()])
        sparse = model(x, t, text)
        model.set_patterns(SlidingTile((1, 1, 1)))
        sta = model(x, t, text)
    torch.testing.assert_close(full, dense, rtol=1e-5, atol=1e-6)
    assert (sparse - dense).abs().max() > 1e-4
    assert (sta - dense).abs().max() > 1e-4
    with pytest.raises(ValueError, match="one per layer"):
        model.set_patterns([Dense()] * 3)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = VideoDiT(TINY)
    x, attrs = sample_clips(4, 0, TINY.world)
    text = attributes_to_tokens(attrs)
    t = torch.linspace(0.1, 0.9, 4)

    def held_out_loss(m):
        torch.manual_seed(1)  # the same noise every time
        with torch.no_grad():
            return float(flow_matching_loss(m, x, text, t))

    before = held_out_loss(model)
    _, losses = train_teacher(
        model,
        Budget(20),
        TrainConfig(batch=4, lr=3e-3, warmup=5, ema=0.5),
        "cpu",
        log=lambda m: None,
    )
    after = held_out_loss(model)
    assert len(losses) == 20
    assert after < 0.8 * before, (before, after)


def test_checkpoint_round_trip_keeps_weights_config_and_patterns(tmp_path):
    model = tiny_model()
    model.set_patterns([FrameTiles(1), SlidingTile((3, 1, 1))])
    save_model(tmp_path / "m.pt", model, steps=4, note="x")
    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta == {"steps": 4, "note": "x"}
    assert loaded.cfg == model.cfg
    assert loaded.patterns == model.patterns
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a.half().float(), msg=k)


def test_bad_configs_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="does not divide"):
        DiTConfig(frames=16, size=60, patch=(2, 8, 8))
    with pytest.raises(ValueError, match="multiple of heads"):
        DiTConfig(dim=100, heads=3)
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        tiny_model()(torch.zeros(1, 3, 8, 32, 32), torch.zeros(1), torch.zeros(1, 3).long())


@pytest.mark.gpu
@pytest.mark.parametrize("pattern", [Dense(), FrameTiles(1), SlidingTile((3, 1, 1))])
def test_the_model_on_triton_matches_the_reference_backend(pattern):
    # bf16 on the fastest backend against the fp32 oracle, relative to the oracle's own bf16
    # error: the reference backend in bf16 is what PyTorch alone would give.
    model = tiny_model(cfg=DiTConfig(depth=2)).cuda()
    model.set_patterns(pattern)
    x, attrs = sample_clips(2, 0, model.cfg.world, "cuda")
    t, text = torch.rand(2, device="cuda"), attributes_to_tokens(attrs).cuda()

    def run(backend, dtype):
        model.set_backend(backend)
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            return model(x, t, text).float()

    exact = run("reference", torch.float32)
    ours = (run("auto", torch.bfloat16) - exact).abs().max()
    torch_err = (run("reference", torch.bfloat16) - exact).abs().max()
    print(f"auto {ours:.3g}, reference bf16 {torch_err:.3g}")
    assert ours <= 2 * torch_err + 1e-3


def test_x0_prediction_turns_the_clean_clip_estimate_into_a_velocity(tmp_path):
    from dataclasses import replace

    from hasten.toyvideo.model import X0_T_MIN

    x0_model = VideoDiT(replace(TINY, prediction="x0"))
    torch.nn.init.normal_(x0_model.patch_out.weight, std=0.02)  # zero-initialised otherwise
    raw = VideoDiT(replace(TINY, prediction="velocity"))
    raw.load_state_dict(x0_model.state_dict())  # same weights: its output is the x0 estimate
    x, _, text = _inputs()
    t = torch.tensor([0.5, 0.01])  # the second is under the floor
    with torch.no_grad():
        v, x0_hat = x0_model(x, t, text), raw(x, t, text)
    tt = t.clamp_min(X0_T_MIN).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(v, (x - x0_hat) / tt)
    # A checkpoint saved before the option existed predicted the velocity.
    save_model(tmp_path / "old.pt", raw)
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    del payload["config"]["prediction"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt")[0].cfg.prediction == "velocity"
    with pytest.raises(ValueError, match="'noise' is not one of"):
        replace(TINY, prediction="noise")
