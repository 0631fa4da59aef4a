"""MODEL spec resolution: random init, handcrafted 75 Hz features, HF dirs, training checkpoints, registry URIs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mert.model import MERT, MERTConfig
from mert.probe.models import ModelSpecError, load_model


def test_random_model_is_seeded_and_does_not_touch_global_rng():
    wav = torch.randn(1, 24000)
    state = torch.random.get_rng_state()
    a, b, c = load_model("random:mert-tiny"), load_model("random:mert-tiny"), load_model("random:mert-tiny@1")
    assert torch.equal(torch.random.get_rng_state(), state)
    ha, hb, hc = a(wav), b(wav), c(wav)
    assert ha.shape == (3, 1, 74, 32)  # hidden_states[0..2] of the 2-layer tiny preset, 74 frames per second
    assert torch.equal(ha, hb) and not torch.allclose(ha, hc)
    assert a.identity_hash == b.identity_hash != c.identity_hash


def test_random_twin_of_a_trained_model_has_its_exact_architecture(tmp_path):
    cfg = MERTConfig.from_name("mert-tiny", hidden_size=48, num_hidden_layers=3, conv_dim=(16,) * 7)
    MERT(cfg).save_pretrained(tmp_path / "export")
    twin = load_model(f"random:{tmp_path / 'export'}")
    h = twin(torch.randn(1, 24000))
    assert h.shape == (4, 1, 74, 48) and twin.identity["kind"] == "random"
    assert dataclasses.replace(twin.model.config, hf_extra={}) == dataclasses.replace(MERT(cfg).config, hf_extra={})
    assert load_model(f"random:{tmp_path / 'export'}").identity_hash == twin.identity_hash  # seeded
    with pytest.raises(ModelSpecError, match="config.json"):
        load_model(f"random:{tmp_path}")


@pytest.mark.parametrize(("spec", "dim"), [("mfcc", 40), ("chroma", 12), ("cqt", 336)])
def test_handcrafted_features_at_75_hz(spec, dim):
    model = load_model(spec)
    h = model(torch.randn(2, 24000) * 0.1)
    assert model.n_layers == 1 and h.shape == (1, 2, 24000 // 320 + 1, dim)
    assert torch.isfinite(h).all()


def test_chroma_peaks_on_the_played_pitch_class():
    t = torch.arange(24000) / 24000
    a440 = torch.sin(2 * torch.pi * 440.0 * t)[None]
    chroma = load_model("chroma")(a440)[0, 0]  # (T, 12), C = 0
    assert int(chroma[20:-20].mean(0).argmax()) == 9  # A


def test_hf_dir_and_training_checkpoint(tmp_path):
    torch.manual_seed(3)
    mert = MERT(MERTConfig.from_name("mert-tiny")).eval()
    wav = torch.randn(1, 12000)
    with torch.no_grad():  # the encoder's no-grad path fuses conv + GroupNorm: compare like with like
        expected = torch.stack(mert(wav, output_hidden_states=True).hidden_states)
    mert.save_pretrained(tmp_path / "hf")
    assert torch.allclose(load_model(str(tmp_path / "hf"))(wav), expected, atol=1e-5)

    step = tmp_path / "checkpoints" / "step-00000010"
    step.mkdir(parents=True)
    state = {f"mert.{k}": v for k, v in mert.state_dict().items()} | {"head.w": torch.zeros(1)}
    cfg = {"encoder": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(mert.config).items()}}
    torch.save({"model": state, "config": cfg}, step / "checkpoint.pt")
    from_ckpt = load_model(str(step))
    assert torch.allclose(from_ckpt(wav), expected, atol=1e-5)
    assert from_ckpt.identity["checkpoint"] != load_model(str(tmp_path / "hf")).identity.get("checkpoint")


def test_bad_specs(tmp_path):
    with pytest.raises(ModelSpecError, match="not a directory"):
        load_model("nonsense")
    with pytest.raises(ModelSpecError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelSpecError, match="random:no-such"):
        load_model("random:no-such-preset")
    (tmp_path / "step-00000001").mkdir()
    with pytest.raises(ModelSpecError, match="neither an HF export"):
        load_model(str(tmp_path / "step-00000001"))


def test_unknown_registry_uri_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # never the cwd's mlflow.db
    with pytest.raises(ModelSpecError, match="models:/mert@candidate: cannot resolve in the registry"):
        load_model("models:/mert@candidate")


def test_conv_spec_gives_the_front_end_features_as_one_layer():
    """``conv:<spec>`` (a diagnostic): the conv front end's features of that very model, one layer, own identity."""
    inner, conv = load_model("random:mert-tiny"), load_model("conv:random:mert-tiny")
    wav = torch.randn(2, 24_000)
    out = conv(wav)
    assert conv.n_layers == 1 and out.shape == (1, 2, 74, inner.config.conv_dim[-1])
    with torch.no_grad():  # the no-grad conv path streams in blocks: equal up to float rounding
        assert torch.allclose(out[0], inner.model(wav).features, atol=1e-5)
    assert conv.identity_hash != inner.identity_hash
    with pytest.raises(ModelSpecError, match="conv: takes a MERT model spec"):
        load_model("conv:mfcc")


@pytest.mark.parametrize("kind", ["hf", "checkpoint"])
def test_loading_a_trained_model_beside_a_twin_leaves_the_twin_unchanged(tmp_path, kind):
    """The flow probes in threads: a trained model's loading initialises parameters (global RNG draws) before its
    weights replace them; inside another thread's seeded twin construction those draws made the twin another network
    (seen: the demo's tempo twin, beat F1 0.431 in one fresh clone and 0.427 in the next). They must wait."""
    import threading
    import time

    from mert.utils.rng import seeded

    mert = MERT(MERTConfig.from_name("mert-tiny")).eval()
    mert.save_pretrained(tmp_path / "hf")
    step = tmp_path / "checkpoints" / "step-00000010"
    step.mkdir(parents=True)
    cfg = {"encoder": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(mert.config).items()}}
    torch.save({"model": {f"mert.{k}": v for k, v in mert.state_dict().items()}, "config": cfg}, step / "checkpoint.pt")
    spec = str(tmp_path / "hf") if kind == "hf" else str(step)

    def construction(during=None) -> torch.Tensor:
        with seeded(123):  # what random_model does around MERT(cfg)
            first = torch.randn(4)
            if during is not None:
                during.start()
                time.sleep(1.0)  # the other thread loads its model now, unless it waits for the lock
            return torch.cat([first, torch.randn(4)])

    alone = construction()
    t = threading.Thread(target=load_model, args=(spec,))
    beside = construction(during=t)
    t.join(60)
    assert torch.equal(alone, beside)
