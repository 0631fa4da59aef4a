"""HuBERT-style iteration end to end: a first model (registered) -> k-means labels of its hidden state -> a second
pretraining, with the parent recorded in run.json, the MLflow run and version tags, and the model card."""

from __future__ import annotations

import json

import pytest

from mert import stages
from mert.model import MERT
from mert.teachers.config import HiddenParams, LabelParams
from mert.teachers.labels import LabelStore
from mert.teachers.parent import load_parent
from mert.train import pretrain
from mert.train.init_from import state_sha256
from mert.train.params import PretrainParams
from tests.teachers.conftest import make_corpus
from tests.train.conftest import tiny_profile


def test_iteration_helpers():
    assert [stages.iteration_dir("data/labels", n) for n in (1, 2, 3)] == [
        "data/labels", "data/labels-iter2", "data/labels-iter3"]  # fmt: skip
    with pytest.raises(ValueError, match="iteration must be >= 1"):
        stages.iteration_dir("data/labels", 0)
    base = LabelParams(teacher="rvq", hidden=HiddenParams(layer=3, n_clusters=100))
    p = stages.iteration_label_params(base, "models:/m/1")
    assert (p.teacher, p.hidden.model, p.hidden.layer, p.hidden.n_clusters) == ("hidden", "models:/m/1", 3, 100)
    assert (base.teacher, base.hidden.model) == ("rvq", None)  # the section itself is left alone


HIDDEN = HiddenParams(n_clusters=16, fit_fraction=1.0, n_init=1, max_iter=5, fit_threads=1)


@pytest.fixture
def corpus_dir(tmp_path):
    """4 music-like clips, 11 s in all (the iteration labels the corpus twice: fit sample, then labels)."""
    make_corpus(tmp_path / "corpus", [3.0, 2.5, 3.5, 2.0], music=True)
    return tmp_path / "corpus"


def test_iteration_two_from_an_export_dir_records_its_parent_in_run_json_and_tags(corpus_dir, tmp_path):
    """Without MLflow (tracker: disk): the parent is the first run's export, whose run.json gives its teacher."""
    from mert.model_card import card_markdown

    params = PretrainParams(profile="mert-tiny", tracker="disk")
    params.profiles["mert-tiny"] = tiny_profile(max_steps=1)
    first = pretrain(corpus_dir, "hash:8:1024", tmp_path / "iter1", params)
    label = stages.iteration_label_params(LabelParams(device="cpu", hidden=HIDDEN), first["export"])
    stages.label(corpus_dir, tmp_path / "labels-iter2", label, progress=False)
    pretrain(corpus_dir, tmp_path / "labels-iter2", tmp_path / "iter2", params)

    weights = state_sha256(MERT.from_pretrained(first["export"]).state_dict())
    lineage = json.loads((tmp_path / "iter2/run.json").read_text())["lineage"]["teacher_lineage"]
    assert lineage["parent"]["teacher"] == {"name": "hash", "hash": lineage["parent"]["teacher"]["hash"],
                                            "iteration": 1, "run_dir": str(tmp_path / "iter1")}  # fmt: skip
    tags = json.loads((tmp_path / "iter2/tags.json").read_text())
    assert (tags["teacher"], tags["teacher_parent_model"], tags["teacher_parent_model_sha256"]) == (
        "hidden", first["export"], weights)  # fmt: skip
    assert (tags["teacher_layer"], tags["teacher_iteration"], "teacher_parent_version" in tags) == ("1", "2", False)
    assert "teacher_parent_model" not in json.loads((tmp_path / "iter1/tags.json").read_text())
    step = sorted((tmp_path / "iter1/checkpoints").glob("step-*"))[-1]  # the same weights as a training checkpoint
    from_ckpt = load_parent(str(step))
    assert (from_ckpt.weights_sha256, from_ckpt.iteration) == (weights, 1)
    card = card_markdown("mert-tiny", "2", tags, {})
    assert f"HuBERT iteration 2: its teacher labels are the 16-cluster k-means codes of hidden state 1 of " \
           f"`{first['export']}`, weights sha256 `{weights[:12]}`." in card  # fmt: skip


@pytest.mark.slow  # ~45 s on 2 loaded cores: two pretraining runs, each logging and registering a pyfunc model
def test_iteration_two_learns_the_first_models_codes_and_names_its_parent(corpus_dir, tmp_path, mlflow_uri,
                                                                        monkeypatch):  # fmt: skip
    """The registry path: the parent is ``models:/mert-tiny@candidate``; the lineage reaches the MLflow run, the
    registered version's tags and its model card."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # models:/ specs resolve in this store
    params = PretrainParams(profile="mert-tiny", tracking_uri=mlflow_uri, experiment="test")
    params.profiles["mert-tiny"] = tiny_profile(max_steps=2)
    first = pretrain(corpus_dir, "hash:8:1024", tmp_path / "iter1", params)
    assert first["registered_version"] == "1"

    parent = "models:/mert-tiny@candidate"
    label = stages.iteration_label_params(LabelParams(device="cpu", hidden=HIDDEN), parent)
    summary = stages.label(corpus_dir, tmp_path / "labels-iter2", label, progress=False)
    assert summary.computed == 4 and summary.usage["codebooks"]["0"]["distinct"] > 1
    second = pretrain(corpus_dir, tmp_path / "labels-iter2", tmp_path / "iter2", params)
    assert second["registered_version"] == "2"

    weights = state_sha256(MERT.from_pretrained(first["export"]).state_dict())
    store = LabelStore.open(tmp_path / "labels-iter2")
    lineage = json.loads((tmp_path / "iter2/run.json").read_text())["lineage"]["teacher_lineage"]
    assert lineage == store.identity["lineage"]
    assert (lineage["parent"]["source"], lineage["parent"]["weights_sha256"]) == (parent, weights)
    assert lineage["parent"]["registry"]["name"] == "mert-tiny" and lineage["parent"]["registry"]["version"] == "1"
    assert lineage["parent"]["teacher"]["iteration"] == 1 and lineage["iteration"] == 2 and lineage["layer"] == 1

    want = {"teacher": "hidden", "teacher_hash": store.identity["hash"], "teacher_parent_model": parent,
            "teacher_parent_model_sha256": weights,
            "teacher_parent_version": "mert-tiny/1", "teacher_layer": "1", "teacher_n_clusters": "16",
            "teacher_iteration": "2", "teacher_kmeans_hash": store.identity["config"]["kmeans_hash"]}  # fmt: skip
    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    run_tags = client.get_run(second["run_id"]).data.tags
    mv = client.get_model_version("mert-tiny", "2")
    assert {k: run_tags.get(k) for k in want} == want == {k: mv.tags.get(k) for k in want}
    assert "teacher_parent_model" not in client.get_model_version("mert-tiny", "1").tags
    assert "train/acc/hidden_0" in client.get_run(second["run_id"]).data.metrics  # metrics named after the teacher

    card = mv.description
    assert (f"HuBERT iteration 2: its teacher labels are the 16-cluster k-means codes of hidden state 1 of `{parent}` "
            f"(version `mert-tiny/1`), weights sha256 `{weights[:12]}`.") in card  # fmt: skip
    assert f"| teacher's parent model | `{parent}` |" in card and "| HuBERT iteration | `2` |" in card
