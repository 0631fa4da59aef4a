"""``cqt_layer``: which hidden state the CQT head reads (a documented deviation; None = the reference's last layer)."""

import pytest
import torch

from mert.model.pretraining import MERTPretrainingModel, PretrainingConfig

SR = 24000
C = 32


def tiny(**overrides) -> MERTPretrainingModel:
    torch.manual_seed(0)
    return MERTPretrainingModel.from_name("mert-tiny", codebook_size=C, mixture_prob=0.0, **overrides).eval()


def batch(B: int = 2, L: int = SR):
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(B, L, generator=g) * 0.1
    labels = torch.randint(0, C, (B, 8, -(-L // 320)), generator=g)
    cqt = torch.rand(B, 336, L // 320 + 1, generator=g)
    return wav, labels, cqt


def _loss(model: MERTPretrainingModel):
    wav, labels, cqt = batch()
    return model(wav, labels, cqt, generator=torch.Generator().manual_seed(1))


def test_last_layer_index_is_the_reference():
    ref = _loss(tiny())
    n = tiny().mert.config.num_hidden_layers
    last = _loss(tiny(cqt_layer=n))
    torch.testing.assert_close(last.metrics["loss/cqt_mse"], ref.metrics["loss/cqt_mse"])
    torch.testing.assert_close(last.loss, ref.loss)


@pytest.mark.parametrize("nomask", [0.0, 1.0])
def test_a_lower_layer_changes_the_cqt_term_and_its_gradient_stops_there(nomask):
    w = {"loss/rvq_ce": 0.0, "loss/cqt_mse": 1.0, "loss/feature_pen": 0.0}
    ref = _loss(tiny(loss_weights=dict(w), pred_nomask_weight=nomask))
    model = tiny(cqt_layer=0, loss_weights=dict(w), pred_nomask_weight=nomask)
    out = _loss(model)
    assert not torch.allclose(out.metrics["loss/cqt_mse"], ref.metrics["loss/cqt_mse"])
    if nomask:
        assert "loss/cqt_mse_nomask" in out.metrics
    out.loss.backward()
    layers = [p.grad for p in model.mert.encoder.layers.parameters()]
    assert all(g is None or not g.any() for g in layers)  # hidden_states[0] is below every layer
    assert model.mert.feature_projection.projection.weight.grad.abs().sum() > 0
    assert model.cqt_head.proj.weight.grad.abs().sum() > 0


def test_bad_cqt_layer_is_refused():
    with pytest.raises(ValueError, match="cqt_layer"):
        PretrainingConfig(cqt_layer=-1)
    with pytest.raises(ValueError, match="past the encoder's last hidden state"):
        tiny(cqt_layer=99)


def test_a_profile_weight_dict_follows_the_label_teacher():
    """Profiles write the label weight as ``loss/rvq_ce`` (mert-small-lowcqt); a k-means store must still load."""
    from mert.train.params import PROFILES

    over = dict(PROFILES["mert-small-lowcqt"].objective_overrides)
    cfg = PretrainingConfig.for_labels("mert-tiny", "kmeans", 1, 100, **over)
    assert cfg.loss_weights == {"loss/kmeans_ce": 1.0, "loss/cqt_mse": 10.0, "loss/feature_pen": 10.0}
    assert PretrainingConfig.for_labels("mert-tiny", "rvq", 8, 1024, **over).loss_weights["loss/rvq_ce"] == 1.0
