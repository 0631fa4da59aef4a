import pytest

from mert.params import ParamsError, from_dict, load_section
from mert.train.params import PROFILES, PretrainParams, Profile


def test_params_yaml_profiles_match_builtin_defaults():
    params = load_section("pretrain", "params.yaml")
    assert params.profile == "mert-small-lowcqt"  # the main job's CPU profile
    assert set(params.profiles) == {"mert-tiny", "mert-small", "mert-small-lowcqt", "mert-95m", "mert-330m"}
    for name, prof in params.profiles.items():
        assert prof == PROFILES[name], name


def test_reference_hyperparameters():
    p95, p330 = PROFILES["mert-95m"], PROFILES["mert-330m"]
    for p in (p95, p330):
        assert p.betas == (0.9, 0.98) and p.eps == 1e-6 and p.weight_decay == 0.01
        assert p.min_clip_samples == 72_000 and p.seed == 1337 and p.max_steps == 400_000
        assert p.warmup_steps == 32_000 and p.precision == "auto" and p.compile is False
    assert (p95.lr, p95.clip_norm, p95.crop_samples, p95.save_interval) == (5e-4, 10.0, 120_000, 25_000)
    assert (p330.lr, p330.clip_norm, p330.crop_samples, p330.save_interval) == (1.5e-3, 1.0, 122_880, 5_000)
    assert p95.grad_accum(8) == 1 and p95.grad_accum(1) == 8  # the 8-GPU batch on one device
    assert p330.grad_accum(64) == 8  # update_freq 8 on 64 GPUs


def test_unknown_key_and_bad_values_error():
    with pytest.raises(ParamsError, match="unknown key"):
        from_dict(PretrainParams, {"profiles": {"x": {"lr": 1.0, "lrr": 2.0}}, "profile": "x"})
    with pytest.raises(ParamsError, match="unknown key"):
        from_dict(PretrainParams, {"proflie": "mert-95m"})
    with pytest.raises(ParamsError, match="not one of"):
        from_dict(PretrainParams, {"profile": "mert-1b"})
    with pytest.raises(ParamsError, match="multiple of 320"):
        from_dict(Profile, {"crop_samples": 1000})


def test_resolve_applies_overrides():
    p = PretrainParams(profile="mert-330m").resolve(max_steps=7, lr=None)
    assert p.max_steps == 7 and p.lr == 1.5e-3


def test_main_job_profile_is_mert_small_with_the_documented_deviations():
    small, low = PROFILES["mert-small"], PROFILES["mert-small-lowcqt"]
    assert low.model_overrides == {**small.model_overrides, "conv_frozen_layers": 2}
    assert low.lr == small.lr and low.seed == small.seed
    assert low.max_steps == 1800 and small.max_steps == 1200
    extra = {k: v for k, v in low.objective_overrides.items() if small.objective_overrides.get(k) != v}
    assert extra == {
        "cqt_scale": "log",
        "cqt_layer": 1,
        "pred_nomask_weight": 1.0,
        "loss_weights": {"loss/rvq_ce": 1.0, "loss/cqt_mse": 10.0, "loss/feature_pen": 10.0},
    }
    resolved = PretrainParams(profile="mert-small-lowcqt", profiles={"mert-small-lowcqt": low}).resolve()
    assert resolved.objective_overrides["cqt_layer"] == 1
