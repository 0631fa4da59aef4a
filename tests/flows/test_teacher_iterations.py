"""The flow's ``teacher_iterations``: iteration 2 labels with the hidden teacher on iteration 1's registered model,
into its own labels and run directories, then probes and promotes the new version like the first (stages faked)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("prefect")


from flows import pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def fake_stages(monkeypatch) -> list[tuple]:
    """Replace every stage the flow calls by a recorder; returns the list of calls."""
    calls: list[tuple] = []
    versions: list[int] = []

    def ingest(source, out, params, progress=True):
        calls.append(("ingest", source, out))
        return SimpleNamespace(as_dict=lambda: {"corpus_files": 1, "corpus_seconds": 60.0, "reasons": {}})

    def label(corpus, labels, params, shard_index=0, num_shards=1, progress=True):
        calls.append(("label", labels, params.teacher, params.hidden.model, shard_index))
        return SimpleNamespace(as_dict=lambda: {"store": labels})

    def prepare(corpus, labels, params):
        calls.append(("fit", labels, params.teacher, params.hidden.model))
        return "hidden-0123"

    def pretrain(corpus, labels, out, params, **kw):
        versions.append(len(versions) + 1)
        calls.append(("pretrain", labels, out))
        return {"export": f"{out}/export", "registered_model": params.profile, "registered_version": str(versions[-1]),
                "run_id": f"run{versions[-1]}", "step": 1}  # fmt: skip

    def probe(model, task, out, params, track=False):
        calls.append(("probe", model, task, out))
        return {"task": Path(task).name, "test_score": 0.5}

    def promote(name, tasks, version=None, **kw):
        calls.append(("promote", name, tuple(tasks), version))
        return SimpleNamespace(rows=[], promoted=False, candidate="2", champion="1", reason="test")

    for name, fn in (("ingest_corpus", ingest), ("label", label), ("prepare_teacher", prepare), ("pretrain", pretrain),
                     ("probe", probe), ("promote", promote), ("track_probe", lambda out: "probe-run")):  # fmt: skip
        monkeypatch.setattr(pipeline.stages, name, fn)
    monkeypatch.setattr(pipeline, "_probe_table", lambda rows: [])
    return calls


def test_iteration_two_relabels_with_the_first_models_hidden_state(tmp_path, monkeypatch, prefect_server):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    text = (tmp_path / "params.yaml").read_text().replace("source: data/demo/raw", "source: data/raw/mine")
    (tmp_path / "params.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    calls = fake_stages(monkeypatch)
    r = pipeline.mert_pipeline(profiles=["mert-tiny"], probe_tasks=["tasks/key"], baselines=["random"], label_shards=2,
                               teacher_iterations=2)  # fmt: skip

    labels = [c for c in calls if c[0] in ("label", "fit")]
    assert labels[:2] != labels[3:] and labels[2][0] == "fit"  # iteration 1's shards, the fit, iteration 2's shards
    assert sorted(labels[:2]) + labels[2:3] + sorted(labels[3:]) == [
                      ("label", "data/labels", "rvq", None, 0), ("label", "data/labels", "rvq", None, 1),
                      ("fit", "data/labels-iter2", "hidden", "models:/mert-tiny/1"),
                      ("label", "data/labels-iter2", "hidden", "models:/mert-tiny/1", 0),
                      ("label", "data/labels-iter2", "hidden", "models:/mert-tiny/1", 1)]  # fmt: skip
    pretrains = [c[1:] for c in calls if c[0] == "pretrain"]
    assert pretrains == [("data/labels", "data/pretrain/mert-tiny"),
                         ("data/labels-iter2", "data/pretrain/mert-tiny-iter2")]  # fmt: skip
    probes = sorted((c[1], c[3]) for c in calls if c[0] == "probe")  # a wave's probes run side by side
    assert probes == [("models:/mert-tiny/1", "data/probe/mert-tiny/key/models__mert-tiny_1.json"),
                      ("models:/mert-tiny/2", "data/probe/mert-tiny-iter2/key/models__mert-tiny_2.json"),
                      ("random:data/pretrain/mert-tiny-iter2/export",
                       "data/probe/mert-tiny-iter2/key/random-init_mert-tiny.json"),
                      ("random:data/pretrain/mert-tiny/export",
                       "data/probe/mert-tiny/key/random-init_mert-tiny.json")]  # fmt: skip
    assert [c for c in calls if c[0] == "promote"] == [("promote", "mert-tiny", ("key",), "1"),
                                                       ("promote", "mert-tiny", ("key",), "2")]  # fmt: skip
    assert list(r["pretrain"]) == ["mert-tiny", "mert-tiny-iter2"] and len(r["label"]) == 4
    assert {row["profile"] for row in r["probe"]} == {"mert-tiny", "mert-tiny-iter2"}


def test_one_iteration_is_the_default_and_zero_is_refused(tmp_path, monkeypatch, prefect_server):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    calls = fake_stages(monkeypatch)
    with pytest.raises(ValueError, match="teacher_iterations must be >= 1"):
        pipeline.mert_pipeline(profiles=["mert-tiny"], probe_tasks=[], teacher_iterations=0)
    assert not calls
