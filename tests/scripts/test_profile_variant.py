"""scripts/profile_variant.py: the variant's params file is params.yaml with one profile added and selected."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mert.params import load_section

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("profile_variant", ROOT / "scripts/profile_variant.py")
pv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pv)


def test_variant_adds_and_selects_the_profile_with_its_overrides(tmp_path):
    import yaml

    params = pv.variant_params(ROOT / "params.yaml", "mert-small", "nomask1800",
                               ["max_steps=1800", "objective_overrides.pred_nomask_weight=1.0",
                                "model_overrides.feature_grad_mult=0.1"])  # fmt: skip
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    pre = load_section("pretrain", path)  # validated like any params.yaml
    assert pre.profile == "nomask1800" and pre.tracker == "disk" and not pre.register
    prof, base = pre.profiles["nomask1800"], pre.profiles["mert-small"]
    assert prof.max_steps == 1800 and prof.objective_overrides["pred_nomask_weight"] == 1.0
    assert prof.model_overrides["feature_grad_mult"] == 0.1
    assert prof.model_overrides["hidden_size"] == base.model_overrides["hidden_size"]  # the rest is the base's
    assert base.max_steps != 1800 and "pred_nomask_weight" not in base.objective_overrides  # the base is untouched


def test_bad_override_is_refused():
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        pv.variant_params(ROOT / "params.yaml", "mert-small", "x", ["max_steps"])
