"""The encoder: presets, frame arithmetic, shapes, masking, layouts, DeepNorm, gradients."""

from __future__ import annotations

import pytest
import torch

from mert import MERT, MERTConfig
from mert.model import ConfigError, MERTOutput
from mert.model.encoder import normalize_waveform


def tiny(**kw) -> MERT:
    return MERT(MERTConfig.from_name("mert-tiny", **kw))


@pytest.mark.parametrize(
    ("seconds", "frames"), [(3.0, 224), (5.0, 374), (5.12, 383), (30.0, 2249)], ids=["3s", "5s", "5.12s", "30s"]
)
def test_num_frames_floor_arithmetic(seconds, frames):
    cfg = MERTConfig.from_name("mert-95m")
    assert cfg.num_frames(round(seconds * 24000)) == frames
    assert cfg.frame_rate == 75.0 and cfg.total_stride == 320 and cfg.receptive_field == 400


def test_num_frames_matches_the_conv_stack():
    model = tiny().eval()
    for n in (400, 401, 719, 720, 24000, 24321):
        with torch.no_grad():
            out = model(torch.randn(1, n))
        assert out.last_hidden_state.shape[1] == model.config.num_frames(n) > 0
    assert model.config.num_frames(399) == 0


@pytest.mark.parametrize(("name", "count"), [("mert-95m", 94_371_712), ("mert-330m", 315_428_992)])
def test_preset_parameter_counts_match_released_encoders(name, count):
    with torch.device("meta"):
        model = MERT(MERTConfig.from_name(name))
    assert model.num_parameters() == count


def test_state_dict_keys_are_the_hf_keys():
    keys = set(tiny().state_dict())
    assert "encoder.pos_conv_embed.conv.weight_g" in keys and "encoder.pos_conv_embed.conv.weight_v" in keys
    assert "feature_extractor.conv_layers.0.layer_norm.weight" in keys
    assert "feature_extractor.conv_layers.1.layer_norm.weight" not in keys
    assert {f"encoder.layers.1.attention.{p}_proj.weight" for p in "qkv"} <= keys
    assert "masked_spec_embed" in keys and len(keys) == 51  # the count transformers' tiny HubertModel has


def test_presets_and_validation():
    big = MERTConfig.from_name("mert-330m")
    assert big.do_stable_layer_norm and big.attention_relax == 32.0 and big.layerdrop == 0.0
    assert MERTConfig.from_name("mert-95m", layerdrop=0.0).layerdrop == 0.0
    with pytest.raises(ConfigError, match="unknown MERT preset"):
        MERTConfig.from_name("mert-1b")
    with pytest.raises(ConfigError, match="unknown MERTConfig field"):
        MERTConfig.from_name("mert-tiny", hidden=3)
    with pytest.raises(ConfigError, match="deepnorm requires"):
        MERTConfig.from_name("mert-330m", deepnorm=True)
    with pytest.raises(ConfigError, match="divisible"):
        MERTConfig.from_name("mert-tiny", num_attention_heads=3)


def test_hf_dict_round_trip():
    for name in ("mert-tiny", "mert-95m", "mert-330m"):
        cfg = MERTConfig.from_name(name)
        d = cfg.to_hf_dict()
        assert d["conv_dim"] == list(cfg.conv_dim) and d["num_feat_extract_layers"] == 7
        assert MERTConfig.from_hf_dict(d) == cfg


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN", "pre-LN"])
def test_output_shapes_and_hidden_state_semantics(stable):
    model = tiny(do_stable_layer_norm=stable).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 12000), output_hidden_states=True)
    assert isinstance(out, MERTOutput)
    t = model.config.num_frames(12000)
    assert out.features.shape == (2, t, 32) and out.last_hidden_state.shape == (2, t, 32)
    assert len(out.hidden_states) == 3 and all(h.shape == (2, t, 32) for h in out.hidden_states)
    assert out.hidden_states[-1] is out.last_hidden_state
    first_std = out.hidden_states[0].std(-1)
    # post-LN normalises the encoder input (hidden_states[0]); pre-LN does not
    assert torch.allclose(first_std, torch.ones_like(first_std), atol=0.05) is (not stable)
    with torch.no_grad():
        assert model(torch.randn(2, 12000)).hidden_states is None


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN", "pre-LN"])
def test_output_layer_stops_early_with_the_full_pass_states(stable):
    """fairseq's ``extract_features(output_layer=L)``: the first L + 1 states of the full pass, nothing above."""
    model = tiny(do_stable_layer_norm=stable, num_hidden_layers=3).eval()
    wav = torch.randn(2, 12000)
    with torch.no_grad():
        full = model(wav, output_hidden_states=True).hidden_states
        for layer in range(4):
            out = model(wav, output_hidden_states=True, output_layer=layer)
            assert len(out.hidden_states) == layer + 1 and out.last_hidden_state is out.hidden_states[-1]
            assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, full))
    for bad in (-1, 4, True):
        with pytest.raises(ValueError, match="not a hidden-state index in 0..3"):
            model(wav, output_layer=bad)


def test_batch_items_are_independent():
    model = tiny().eval()
    wav = torch.randn(3, 16000)
    with torch.no_grad():
        batched = model(wav, output_hidden_states=True).hidden_states
        for i in range(3):
            single = model(wav[i : i + 1], output_hidden_states=True).hidden_states
            for a, b in zip(batched, single):
                torch.testing.assert_close(a[i : i + 1], b, atol=1e-5, rtol=1e-5)


def test_zero_padding_changes_features_groupnorm_is_whole_clip():
    """Documented behaviour: layer 0's GroupNorm uses whole-clip statistics, so padding is not neutral."""
    model = tiny().eval()
    wav = torch.randn(1, 16000)
    padded = torch.cat([wav, torch.zeros(1, 8000)], dim=1)
    with torch.no_grad():
        a = model(wav).features
        b = model(padded).features[:, : a.shape[1]]
    assert (a - b).abs().max() > 1e-3


def test_mask_replaces_frames_with_masked_spec_embed():
    model = tiny().eval()
    wav = torch.randn(2, 12000)
    mask = torch.zeros(2, model.config.num_frames(12000), dtype=torch.bool)
    mask[0, 5:15] = True
    mask[1, 30:33] = True
    seen = {}
    model.encoder.pos_conv_embed.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        out = model(wav, mask=mask)
        unmasked = model(wav).last_hidden_state
    x = seen["x"]
    assert torch.equal(x[mask], model.masked_spec_embed.expand(int(mask.sum()), -1))
    assert not torch.equal(out.last_hidden_state, unmasked)
    with pytest.raises(ValueError, match="mask shape"):
        model(wav, mask=mask[:, :-1])


def test_normalize_option():
    wav = 0.1 * torch.randn(2, 5000) + 0.3
    y = normalize_waveform(wav)
    assert torch.allclose(y.mean(-1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(y.var(-1, correction=0), torch.ones(2), atol=1e-4)
    model = tiny(do_normalize=True).eval()
    plain = MERT(MERTConfig.from_name("mert-tiny"))
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(wav).last_hidden_state, plain(y).last_hidden_state)


def test_training_mode_dropout_layerdrop_and_grad_mult():
    model = tiny(layerdrop=0.0).train()
    wav = torch.randn(2, 12000)
    a, b = model(wav).last_hidden_state, model(wav).last_hidden_state
    assert not torch.equal(a, b)  # dropout is active
    out = model(wav)
    out.features.pow(2).mean().backward(retain_graph=True)
    g_scaled = model.feature_extractor.conv_layers[0].conv.weight.grad.clone()
    model.zero_grad()
    model.config.feature_grad_mult = 1.0
    torch.manual_seed(0)
    model(wav).features.pow(2).mean().backward()
    g_full = model.feature_extractor.conv_layers[0].conv.weight.grad
    torch.testing.assert_close(g_scaled, 0.1 * g_full)


def test_layerdrop_skips_layers_in_training_only():
    model = tiny(layerdrop=0.99, hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0).train()
    with torch.no_grad():
        hs = model(torch.randn(1, 8000), output_hidden_states=True).hidden_states
        assert torch.equal(hs[0], hs[-1])  # both layers dropped (p=0.99, seed 0)
        model.eval()
        hs = model(torch.randn(1, 8000), output_hidden_states=True).hidden_states
        assert not torch.equal(hs[0], hs[-1])


def test_deepnorm_residual_and_init():
    torch.manual_seed(0)
    dn = tiny(deepnorm=True)
    torch.manual_seed(0)
    plain = tiny()
    beta = (8 * 2) ** 0.25
    a, b = dn.encoder.layers[0], plain.encoder.layers[0]
    torch.testing.assert_close(a.feed_forward.output_dense.weight * beta, b.feed_forward.output_dense.weight)
    torch.testing.assert_close(a.attention.v_proj.weight * beta, b.attention.v_proj.weight)
    torch.testing.assert_close(a.attention.q_proj.weight, b.attention.q_proj.weight)
    assert a.alpha == pytest.approx(4**0.25) and b.alpha == 1.0


def test_bf16_autocast_attention_close_to_fp32():
    model = tiny().eval()
    wav = torch.randn(1, 12000)
    with torch.no_grad():
        ref = model(wav).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(wav).last_hidden_state
    assert low.dtype in (torch.bfloat16, torch.float32)
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("budget_mib", [64, 0.5, 0.05], ids=["whole-batch", "few-stretches", "8-frame-stretches"])
def test_inference_fast_path_equals_autograd_path(budget_mib):
    """Under no_grad a batch over the budget streams with GroupNorm folded into layer 0, one under it runs whole:
    the same numbers as the graph path either way."""
    model = tiny().eval()
    model.feature_extractor.stream_budget_mib = budget_mib
    wav = 0.2 * torch.randn(2, 20000) + 0.05  # a DC offset too
    with torch.no_grad():
        fast = model(wav, output_hidden_states=True)
    slow = model(wav, output_hidden_states=True)
    assert slow.features.requires_grad
    torch.testing.assert_close(fast.features, slow.features.detach(), atol=1e-5, rtol=1e-5)
    for a, b in zip(fast.hidden_states, slow.hidden_states):
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)
