"""Oracle parity with ``transformers.HubertModel`` and the released checkpoint layout."""

from __future__ import annotations

import json

import pytest
import torch

from mert import MERT, MERTConfig
from mert.model.hf import CheckpointError, read_state_dict

transformers = pytest.importorskip("transformers")

TINY_HF = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[32] * 7,
    conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    conv_stride=[5, 2, 2, 2, 2, 2, 2],
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


def _hubert(stable: bool) -> torch.nn.Module:
    torch.manual_seed(1 + stable)
    cfg = transformers.HubertConfig(**TINY_HF, do_stable_layer_norm=stable, attn_implementation="eager")
    model = transformers.HubertModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases so that a mis-wired parameter shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name.endswith("weight_g") or "original0" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _compare(ours: MERT, ref: torch.nn.Module, wav: torch.Tensor, stable: bool) -> None:
    with torch.no_grad():
        a = ours(wav, output_hidden_states=True)
        b = ref(wav, output_hidden_states=True)
    assert len(a.hidden_states) == len(b.hidden_states) == ours.config.num_hidden_layers + 1
    # transformers 5 records hidden_states[-1] before the final LayerNorm in the pre-LN layout; the released
    # (4.x) semantics, which we keep, put the normalised state there (== last_hidden_state).
    n = len(a.hidden_states) - (1 if stable else 0)
    for i in range(n):
        torch.testing.assert_close(a.hidden_states[i], b.hidden_states[i], atol=1e-4, rtol=1e-4, msg=f"layer {i}")
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.hidden_states[-1], b.last_hidden_state, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN", "pre-LN"])
def test_hubert_checkpoint_loads_with_equal_hidden_states(tmp_path, stable):
    ref = _hubert(stable)
    ref.save_pretrained(tmp_path)
    ours = MERT.from_pretrained(tmp_path)
    assert ours.config.do_stable_layer_norm is stable
    wav = torch.randn(2, 24000 + 123)
    _compare(ours, ref, wav, stable)


def test_transformers5_writes_parametrization_keys_that_we_map(tmp_path):
    ref = _hubert(False)
    ref.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "model.safetensors"))
    pos = sorted(k for k in stored if "pos_conv" in k)
    assert pos == [
        "encoder.pos_conv_embed.conv.bias",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    ]
    ours = MERT.from_pretrained(tmp_path)
    conv = ours.encoder.pos_conv_embed.conv
    torch.testing.assert_close(conv.weight_g.data, stored[pos[1]])
    torch.testing.assert_close(conv.weight_v.data, stored[pos[2]])
    torch.testing.assert_close(conv.weight, ref.encoder.pos_conv_embed.conv.weight, atol=1e-6, rtol=1e-5)
    mapped = read_state_dict(tmp_path)
    assert "encoder.pos_conv_embed.conv.weight_g" in mapped and not any("parametrizations" in k for k in mapped)


def test_released_weight_g_weight_v_bin_layout(tmp_path):
    """The hub files: ``pytorch_model.bin`` with ``weight_g``/``weight_v`` keys and a MERT config.json."""
    ref = _hubert(True)
    state = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in ref.state_dict().items()
    }
    assert "encoder.pos_conv_embed.conv.weight_g" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    cfg = ref.config.to_dict() | {
        "model_type": "mert_model",
        "architectures": ["MERTModel"],
        "attention_relax": 32.0,
        "feature_extractor_cqt": False,
        "deepnorm": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = MERT.from_pretrained(tmp_path)
    assert ours.config.attention_relax == 32.0
    _compare(ours, ref, torch.randn(1, 30000), stable=True)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("stable", [False, True], ids=["post-LN", "pre-LN"])
def test_our_save_pretrained_loads_strictly_into_hubert(tmp_path, safe, stable):
    torch.manual_seed(3)
    ours = MERT(MERTConfig.from_name("mert-tiny", do_stable_layer_norm=stable)).eval()
    ours.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).exists()
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["sampling_rate"] == 24000
    ref, info = transformers.HubertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    _compare(ours, ref.eval(), torch.randn(2, 16000), stable)
    again = MERT.from_pretrained(tmp_path)
    assert again.config == ours.config
    for k, v in ours.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_strict_loading_names_bad_keys(tmp_path):
    ours = MERT(MERTConfig.from_name("mert-tiny"))
    ours.save_pretrained(tmp_path, safe_serialization=False)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    del state["encoder.layers.1.attention.q_proj.bias"]
    state["encoder.layers.0.extra.weight"] = torch.zeros(1)
    state["feature_projection.projection.weight"] = torch.zeros(32, 31)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        MERT.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing (1): encoder.layers.1.attention.q_proj.bias" in msg
    assert "unexpected (1): encoder.layers.0.extra.weight" in msg
    assert "feature_projection.projection.weight: checkpoint (32, 31) vs model (32, 32)" in msg


def test_preprocessor_do_normalize_is_followed(tmp_path):
    torch.manual_seed(0)
    ours = MERT(MERTConfig.from_name("mert-tiny", do_normalize=True)).eval()
    ours.save_pretrained(tmp_path)
    assert MERT.from_pretrained(tmp_path).config.do_normalize is True
    assert MERT.from_pretrained(tmp_path, do_normalize=False).config.do_normalize is False
    (tmp_path / "preprocessor_config.json").unlink()
    assert MERT.from_pretrained(tmp_path).config.do_normalize is False  # falls back to the config default


def test_cqt_config_rejected(tmp_path):
    MERT(MERTConfig.from_name("mert-tiny")).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text()) | {"feature_extractor_cqt": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="feature_extractor_cqt.*not supported"):
        MERT.from_pretrained(tmp_path)


@pytest.mark.parametrize("stable", [False, True], ids=["post-LN", "pre-LN"])
def test_padded_batch_against_hubert_attention_mask(tmp_path, stable):
    """``HubertModel(input_values, attention_mask)`` on a padded batch vs ours (what docs/model.md documents).

    The unpadded row agrees. For the padded row, our features equal HubertModel's on the clip alone, while
    HubertModel's own padded output differs from it: its layer-0 GroupNorm (group-norm models such as MERT) takes
    statistics over the padding too, and its frames past the clip's end are not zeroed.
    """
    ref = _hubert(stable)
    ref.save_pretrained(tmp_path)
    ours = MERT.from_pretrained(tmp_path)
    torch.manual_seed(0)
    x, m = torch.zeros(2, 24000), torch.zeros(2, 24000, dtype=torch.long)
    for i, n in enumerate((24000, 13000)):
        x[i, :n], m[i, :n] = 0.1 * torch.randn(n), 1
    with torch.no_grad():
        a = ours(input_values=x, attention_mask=m, output_hidden_states=True)
        b = ref(input_values=x, attention_mask=m, output_hidden_states=True)
        alone = ref(x[1:, :13000], output_hidden_states=True)
    t = alone.last_hidden_state.shape[1]
    n = len(a.hidden_states) - (1 if stable else 0)  # see _compare: transformers 5's last pre-LN state
    for i in range(n):
        torch.testing.assert_close(a.hidden_states[i][0], b.hidden_states[i][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.hidden_states[i][1, :t], alone.hidden_states[i][0], atol=1e-4, rtol=1e-4)
        rel = (b.hidden_states[i][1, :t] - alone.hidden_states[i][0]).norm() / alone.hidden_states[i][0].norm()
        assert rel > 0.05, f"layer {i}: HubertModel's padded row now matches the clip alone ({rel:.3f})"
    assert not a.last_hidden_state[1, t:].any() and b.last_hidden_state[1, t:].abs().max() > 0
