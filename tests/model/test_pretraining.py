"""MERTPretrainingModel: the combined loss, masked-only targets, clean targets, trimming, and learning."""

import pytest
import torch

from mert.model.encoder import MERT
from mert.model.pretraining import MERTPretrainingModel, PretrainingConfig

SR = 24000
C = 32  # a small codebook keeps the tests fast; 8 codebooks as in the reference


def tiny(**overrides) -> MERTPretrainingModel:
    torch.manual_seed(0)
    return MERTPretrainingModel.from_name("mert-tiny", codebook_size=C, **overrides)


def batch(B: int = 2, seconds: float = 1.0, K: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    L = int(seconds * SR)
    wav = torch.randn(B, L, generator=g) * 0.1
    frames = -(-L // 320)  # EnCodec frames, ceil(L / 320): 375 for 5 s vs 374 encoder frames (75 vs 74 for 1 s)
    labels = torch.randint(0, C, (B, K, frames), generator=g)
    cqt = torch.rand(B, 336, L // 320 + 1, generator=g)  # nnAudio (center=True) gives L // 320 + 1 frames
    return wav, labels, cqt


def test_presets_hold_the_reference_numbers():
    p95, p330 = PretrainingConfig.from_name("mert-95m"), PretrainingConfig.from_name("mert-330m")
    assert (p95.final_dim, p330.final_dim) == (64, 128)
    assert p95.mixture_len_range == (12000, 24000) and p330.mixture_len_range == (12000, 36000)
    for p in (p95, p330, PretrainingConfig.from_name("mert-tiny")):
        assert (p.n_codebooks, p.codebook_size, p.logit_temp, p.cqt_bins, p.head) == (8, 1024, 0.1, 336, "nce")
        assert p.loss_weights == {"loss/rvq_ce": 1.0, "loss/cqt_mse": 1.0, "loss/feature_pen": 10.0}
        assert (p.mask_prob, p.mask_length, p.min_masks) == (0.8, 5, 2)
        assert (p.mixture_prob, p.mixture_n_range, p.mixture_volume) == (0.5, (1, 3), 1.0)
    p95.loss_weights["loss/cqt_mse"] = 0.0  # presets never share their dict
    assert PretrainingConfig.from_name("mert-95m").loss_weights["loss/cqt_mse"] == 1.0
    km = PretrainingConfig.kmeans_baseline("mert-95m", clusters=500)
    assert (km.teacher, km.n_codebooks, km.codebook_size) == ("kmeans", 1, 500)
    assert km.loss_weights == {"loss/kmeans_ce": 1.0, "loss/cqt_mse": 1.0, "loss/feature_pen": 10.0}
    with pytest.raises(ValueError, match="unknown loss_weights"):
        PretrainingConfig(loss_weights={"loss/rvq": 1.0})
    with pytest.raises(ValueError):
        PretrainingConfig(head="mlp")


def test_forward_metrics_and_weighted_total():
    model = tiny().eval()
    wav, labels, cqt = batch()
    out = model(wav, labels, cqt, generator=torch.Generator().manual_seed(0))
    m = out.metrics
    for key in ["loss/rvq_ce", "loss/cqt_mse", "loss/feature_pen", "loss/total", "mask_frac", "mix_frac"]:
        assert key in m
    assert all(f"acc/rvq_{k}" in m and f"loss/rvq_ce_{k}" in m for k in range(8))
    torch.testing.assert_close(m["loss/rvq_ce"], sum(m[f"loss/rvq_ce_{k}"] for k in range(8)))
    want = m["loss/rvq_ce"] + 1.0 * m["loss/cqt_mse"] + 10.0 * m["loss/feature_pen"]
    torch.testing.assert_close(out.loss.detach(), want)
    assert out.mask.shape == (2, 74) and 0.4 < m["mask_frac"] < 0.7
    assert m["mix_frac"] == 0 and not out.mixed.any()  # eval mode: no mixture by default
    assert abs(m["loss/rvq_ce_0"].item() - torch.log(torch.tensor(float(C))).item()) < 1.0  # near chance at init


def test_loss_ignores_targets_at_unmasked_frames():
    model = tiny().eval()
    wav, labels, cqt = batch()
    mask = model.sample_mask(2, 74, torch.Generator().manual_seed(1), "cpu")
    cqt.requires_grad_(True)
    base = model(wav, labels, cqt, mask=mask)
    base.loss.backward()
    grad = cqt.grad[:, :, :74].transpose(1, 2)  # (B, T, bins)
    assert grad[~mask].abs().max() == 0 and grad[mask].abs().max() > 0  # no gradient into unmasked CQT targets
    assert cqt.grad[:, :, 74:].abs().max() == 0
    other = labels.clone()
    other.transpose(1, 2)[:, :74][~mask] = (other.transpose(1, 2)[:, :74][~mask] + 1) % C
    other[..., 74:] = (other[..., 74:] + 5) % C  # the 75th codec frame is trimmed away
    cqt2 = cqt.detach().clone()
    cqt2.transpose(1, 2)[:, :74][~mask] += 1.0
    same = model(wav, other, cqt2, mask=mask)
    torch.testing.assert_close(same.loss, base.loss, rtol=0, atol=0)
    changed = labels.clone()
    changed.transpose(1, 2)[:, :74][mask] = (changed.transpose(1, 2)[:, :74][mask] + 1) % C
    assert not torch.equal(model(wav, changed, cqt.detach(), mask=mask).loss, base.loss)


def test_targets_come_from_clean_audio_while_the_encoder_sees_the_mixture():
    seen = []

    def cqt_fn(w):
        seen.append(w.clone())
        return torch.rand(w.shape[0], 336, w.shape[1] // 320 + 1)

    model = tiny(mixture_len_range=(2400, 4800)).train()
    model.cqt_fn = cqt_fn
    encoder_inputs = []
    model.mert.register_forward_pre_hook(lambda mod, args, kwargs: encoder_inputs.append(args[0]), with_kwargs=True)
    wav, labels, _ = batch(B=4)
    out = model(wav, labels, generator=torch.Generator().manual_seed(3))
    assert out.mixed.any() and "loss/cqt_mse" in out.metrics
    assert torch.equal(seen[0], wav)  # CQT computed on the clean batch
    assert torch.equal(encoder_inputs[0][~out.mixed], wav[~out.mixed])
    assert not torch.equal(encoder_inputs[0][out.mixed], wav[out.mixed])  # the encoder got the noisy audio


def test_label_trimming_both_ways_and_missing_cqt():
    model = tiny(loss_weights={"loss/rvq_ce": 1.0, "loss/feature_pen": 10.0}).eval()
    wav, labels, _ = batch()
    short = model(wav, labels[..., :60])  # labels shorter than the 74 frames: features trimmed to 60
    assert short.mask.shape == (2, 60) and "loss/cqt_mse" not in short.metrics
    strict = tiny().eval()
    with pytest.raises(ValueError, match="cqt_mse"):
        strict(wav, labels)
    with pytest.raises(ValueError, match="labels must be"):
        strict(wav, labels[:, :3])


def test_kmeans_baseline_and_softmax_variant():
    torch.manual_seed(0)
    km = MERTPretrainingModel(MERT(tiny().mert.config), PretrainingConfig.kmeans_baseline("mert-tiny", 50))
    wav, labels, cqt = batch()
    out = km.eval()(wav, labels[:, 0] % 50, cqt)  # (B, T) labels for the single k-means set
    assert "loss/kmeans_ce" in out.metrics and "acc/kmeans_0" in out.metrics and "acc/kmeans_1" not in out.metrics
    sm = tiny(head="softmax").eval()
    out = sm(wav, labels, cqt)
    out.loss.backward()
    assert sm.label_head.classifier.weight.grad.abs().sum() > 0


def test_encoder_state_dict_is_the_release_part():
    model = tiny()
    enc_keys = set(model.mert.state_dict())
    assert "masked_spec_embed" in enc_keys and not any("label" in k or "cqt" in k for k in enc_keys)
    assert {f"mert.{k}" for k in enc_keys} <= set(model.state_dict())


def test_loss_falls_on_a_fixed_batch():
    model = tiny().train()
    wav, labels, cqt = batch(B=2, seconds=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    losses, cqt_mse = [], []
    for _ in range(30):
        out = model(wav, labels, cqt, generator=g, mix=False)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        cqt_mse.append(out.metrics["loss/cqt_mse"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, losses
    assert sum(cqt_mse[-5:]) < 0.5 * sum(cqt_mse[:5]), cqt_mse


def test_five_seconds_trims_375_codec_frames_to_374():
    model = tiny().eval()
    wav, labels, cqt = batch(B=1, seconds=5.0)
    assert labels.shape[-1] == 375 and cqt.shape[-1] == 376
    out = model(wav, labels, cqt, generator=torch.Generator().manual_seed(0))
    assert out.mask.shape == (1, 374)


def test_seeded_mixture_and_mask_are_reproducible():
    model = tiny(mixture_len_range=(2400, 4800)).eval()
    wav, labels, cqt = batch(B=4)
    a = model(wav, labels, cqt, mix=True, generator=torch.Generator().manual_seed(5))
    b = model(wav, labels, cqt, mix=True, generator=torch.Generator().manual_seed(5))
    c = model(wav, labels, cqt, mix=True, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.mixed, b.mixed) and torch.equal(a.loss, b.loss)
    assert not torch.equal(a.mask, c.mask)


def test_bf16_autocast_step_is_finite():
    model = tiny().train()
    wav, labels, cqt = batch(B=2, seconds=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(wav, labels, cqt, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
