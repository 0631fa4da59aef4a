"""The student's objective for any teacher (K, C and metric names from the labels) and the CQT target scale."""

import pytest
import torch

from mert.model.encoder import MERT
from mert.model.pretraining import MERTPretrainingModel, PretrainingConfig, cqt_scaled, teacher_kind


@pytest.mark.parametrize(
    "name, kind",
    [
        ("rvq-random-projection", "rvq"),
        ("rvq-encodec24k-pretrained", "rvq"),
        ("kmeans-mfcc+chroma", "kmeans"),
        ("bestrq", "bestrq"),
        ("melrvq", "melrvq"),
        ("hash", "rvq"),
        ("", "rvq"),
    ],
)
def test_teacher_kind(name, kind):
    assert teacher_kind(name) == kind


def test_for_labels_sizes_the_heads_and_renames_the_label_loss():
    c = PretrainingConfig.for_labels("mert-95m", "bestrq", 1, 4096)
    assert (c.teacher, c.n_codebooks, c.codebook_size, c.final_dim) == ("bestrq", 1, 4096, 64)
    assert c.loss_weights == {"loss/bestrq_ce": 1.0, "loss/cqt_mse": 1.0, "loss/feature_pen": 10.0}
    assert PretrainingConfig.for_labels("mert-95m", "rvq", 8, 1024) == PretrainingConfig.from_name("mert-95m")
    assert PretrainingConfig.kmeans_baseline("mert-tiny", 50) == PretrainingConfig.for_labels(
        "mert-tiny", "kmeans", 1, 50
    )
    m = PretrainingConfig.for_labels("mert-tiny", "melrvq", 8, 1024, mixture_prob=0.0)
    assert m.mixture_prob == 0.0 and m.label_key == "loss/melrvq_ce"
    with pytest.raises(ValueError, match="teacher must be one of"):
        PretrainingConfig.for_labels("mert-tiny", "vqvae", 8, 1024)
    with pytest.raises(ValueError, match="unknown loss_weights"):  # another teacher's key is an error
        PretrainingConfig.for_labels("mert-tiny", "bestrq", 1, 64, loss_weights={"loss/kmeans_ce": 1.0})
    # the preset's own label key (as profiles write it) means this teacher's label CE
    b = PretrainingConfig.for_labels("mert-tiny", "bestrq", 1, 64, loss_weights={"loss/rvq_ce": 2.0})
    assert b.loss_weights == {"loss/bestrq_ce": 2.0}


def test_metrics_carry_the_teacher_name():
    torch.manual_seed(0)
    cfg = PretrainingConfig.for_labels("mert-tiny", "bestrq", 2, 64)
    model = MERTPretrainingModel(_tiny(), cfg).eval()
    wav = torch.randn(2, 24_000) * 0.1
    labels = torch.randint(0, 64, (2, 2, 75))
    out = model(wav, labels, torch.rand(2, 336, 76), generator=torch.Generator().manual_seed(0))
    assert {"loss/bestrq_ce", "acc/bestrq_0", "acc/bestrq_1", "loss/bestrq_ce_1"} <= set(out.metrics)
    assert not any("rvq_" in k and "bestrq" not in k for k in out.metrics)


def _tiny():
    from mert.model.config import MERTConfig

    return MERT(MERTConfig.from_name("mert-tiny"))


def test_cqt_scale_log_is_the_documented_formula():
    lin = PretrainingConfig.from_name("mert-tiny")
    assert lin.cqt_scale == "linear"  # the reference is the default
    log = PretrainingConfig.from_name("mert-tiny", cqt_scale="log", cqt_log_gain=10.0, cqt_log_mean=0.5, cqt_log_std=2)
    c = torch.rand(2, 336, 5)
    assert torch.equal(cqt_scaled(c, lin), c)
    torch.testing.assert_close(cqt_scaled(c, log), (torch.log1p(10.0 * c) - 0.5) / 2)
    with pytest.raises(ValueError, match="cqt_scale"):
        PretrainingConfig.from_name("mert-tiny", cqt_scale="db")
    with pytest.raises(ValueError, match="> 0"):
        PretrainingConfig.from_name("mert-tiny", cqt_scale="log", cqt_log_std=0.0)


def test_cqt_loss_uses_the_scaled_target():
    torch.manual_seed(0)
    wav, labels = torch.randn(2, 24_000) * 0.1, torch.randint(0, 32, (2, 8, 75))
    cqt = torch.rand(2, 336, 76) * 3
    mask = torch.zeros(2, 74, dtype=torch.bool)
    mask[:, 10:40] = True
    losses = {}
    for scale in ("linear", "log"):
        torch.manual_seed(0)
        model = MERTPretrainingModel(
            _tiny(), PretrainingConfig.from_name("mert-tiny", codebook_size=32, cqt_scale=scale)
        )
        out = model.eval()(wav, labels, cqt, mask=mask)
        with torch.no_grad():
            x = model.mert(wav, mask=mask).last_hidden_state[:, :74][mask]
            target = cqt[:, :, :74].transpose(1, 2)[mask]
            want = torch.nn.functional.mse_loss(model.cqt_head(x), cqt_scaled(target, model.config))
        torch.testing.assert_close(out.metrics["loss/cqt_mse"], want)
        losses[scale] = float(want)
    assert losses["linear"] != losses["log"]
