"""The ``ablation`` params section is strict, agrees with the teachers/baselines it names, and plans the grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from mert.ablation.params import BASELINES, TEACHERS, AblationParams
from mert.ablation.plan import Layout, cell_objective, cell_of, cells, model_spec, rows
from mert.params import ParamsError, load_params, load_section
from mert.train.params import PretrainParams

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_section_is_valid_and_its_profile_exists():
    params = load_params(ROOT / "params.yaml")
    ab = params["ablation"]
    assert set(ab.teachers) <= set(TEACHERS) and ab.cqt and ab.tasks
    prof = ab.profile_of(params["pretrain"])
    assert prof.max_steps == (ab.max_steps or params["pretrain"].profiles[ab.profile].max_steps)


def test_names_agree_with_the_library():
    from mert.model.pretraining import TEACHERS as MODEL_TEACHERS
    from mert.probe.models import HANDCRAFTED
    from mert.teachers.commands import TEACHERS as LABEL_TEACHERS

    assert set(TEACHERS) == set(MODEL_TEACHERS) == set(LABEL_TEACHERS)
    assert set(BASELINES) == set(HANDCRAFTED)


@pytest.mark.parametrize(
    "text, match",
    [
        ("ablation:\n  teachers: [rvq, encodec]\n", "teachers"),
        ("ablation:\n  teachers: [rvq, rvq]\n", "duplicates"),
        ("ablation:\n  teachers: []\n", "must not be empty"),
        ("ablation:\n  cqt: [with, none]\n", "cqt"),
        ("ablation:\n  baselines: [random, mfcc]\n", "baselines"),
        ("ablation:\n  baselines: [wav2vec]\n", "baselines"),
        ("ablation:\n  tasks: [key/../x]\n", "tasks"),
        ("ablation:\n  max_steps: 0\n", "max_steps"),
        ("ablation:\n  max_steps: 1.5\n", "max_steps: 1.5 matches none"),
        ("ablation:\n  n_boot: -1\n", "n_boot"),
        ("ablation:\n  techers: [rvq]\n", "unknown key"),
    ],
)
def test_bad_values_are_rejected(tmp_path: Path, text: str, match: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=match):
        load_section("ablation", path)


def test_unknown_profile_names_the_key():
    with pytest.raises(ParamsError, match="ablation.profile 'mert-huge'"):
        AblationParams(profile="mert-huge").profile_of(PretrainParams())


def test_grid_rows_and_specs():
    ab = AblationParams(teachers=["rvq", "kmeans"], cqt=["with", "without"], baselines=["mfcc"])
    assert [c.name for c in cells(ab)] == ["rvq-with", "rvq-without", "kmeans-with", "kmeans-without"]
    assert rows(ab)[-2:] == [("random", "random-init"), ("mfcc", "handcrafted")]
    assert model_spec(ab, "random") == f"random:{Layout(ab).run('rvq-with') / 'export'}"  # the cells' architecture
    assert model_spec(ab, "mfcc") == "mfcc"
    assert model_spec(ab, "kmeans-without") == str(Layout(ab).run("kmeans-without") / "export")
    with pytest.raises(ValueError, match="not a cell"):
        cell_of(ab, "bestrq-with")


@pytest.mark.parametrize("teacher", ["rvq", "melrvq"])
def test_without_cqt_zeroes_only_the_cqt_weight(teacher: str):
    from mert.model.pretraining import PretrainingConfig

    prof = AblationParams().profile_of(PretrainParams())
    with_ = PretrainingConfig.for_labels(prof.model, teacher, 8, 1024, **cell_objective(prof, teacher, "with"))
    without = PretrainingConfig.for_labels(prof.model, teacher, 8, 1024, **cell_objective(prof, teacher, "without"))
    assert with_.loss_weights["loss/cqt_mse"] == 1.0 and without.loss_weights["loss/cqt_mse"] == 0.0
    rest = {k: v for k, v in with_.loss_weights.items() if k != "loss/cqt_mse"}
    assert rest == {k: v for k, v in without.loss_weights.items() if k != "loss/cqt_mse"}
    assert rest[f"loss/{teacher}_ce"] == 1.0
    logged = PretrainingConfig.for_labels(prof.model, teacher, 8, 1024, **cell_objective(prof, teacher, "log"))
    assert logged.cqt_scale == "log" and logged.loss_weights == with_.loss_weights


def test_cell_objective_keeps_the_profile_overrides_and_does_not_modify_it():
    import dataclasses

    prof = dataclasses.replace(AblationParams().profile_of(PretrainParams()), objective_overrides={"mixture_prob": 0.0})
    over = cell_objective(prof, "kmeans", "without")
    assert over["mixture_prob"] == 0.0 and over["loss_weights"]["loss/kmeans_ce"] == 1.0
    assert prof.objective_overrides == {"mixture_prob": 0.0}
