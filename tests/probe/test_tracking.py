"""MLflow logging of probes, version tags and champion promotion (sqlite store in tmp_path)."""

from __future__ import annotations

import json

import pytest

from mert.probe.tracking import decide, parse_registry_uri, score_tags


def test_parse_registry_uri():
    assert parse_registry_uri("models:/mert@candidate") == ("mert", "candidate", None)
    assert parse_registry_uri("models:/mert-95m/3") == ("mert-95m", None, "3")
    with pytest.raises(ValueError):
        parse_registry_uri("models:/mert/latest")


def test_promotion_rule_explains_itself():
    assert decide({"key": 0.6, "pitch": 0.9}, None, 0.0) == (True, "there is no champion yet")
    ok, why = decide({"key": 0.6, "pitch": 0.9}, {"key": 0.5, "pitch": 0.95}, 0.0)
    assert ok and "+0.0250" in why and "better on 1/2" in why
    ok, why = decide({"key": 0.6, "pitch": None}, {"key": 0.5, "pitch": 0.95}, 0.0)
    assert not ok and "no probe score for ['pitch']" in why
    assert not decide({"key": 0.51}, {"key": 0.5}, 0.05)[0]


def _report(task: str, score: float, uri: str) -> dict:
    return {"task": task, "task_kind": "key", "metric": "key_weighted", "test_score": score, "valid_score": score,
            "best_layer": "1", "per_layer": {"0": 0.1, "1": score, "weighted": 0.2},
            "per_layer_test": {"0": 0.1, "1": score, "weighted": 0.2}, "test_metrics": {"key_weighted": score},
            "model": {"label": uri, "hash": "abc", "registry_uri": uri}, "params": {"lrs": [0.001]},
            "n_skipped": 0, "n_test": 60, "ci_low": score - 0.1, "ci_high": score + 0.1, "majority_rate": 0.125,
            "majority_baseline": "always 'C major' (the most frequent train class)"}  # fmt: skip


def test_score_tags_carry_the_evidence():
    tags = score_tags(_report("key", 0.5, "models:/mert@candidate"))
    assert tags == {"probe.key.key_weighted": "0.5", "probe.key.best_layer": "1", "probe.key.metric": "key_weighted",
                    "probe.key.n_test": "60", "probe.key.ci_low": "0.4", "probe.key.ci_high": "0.6",
                    "probe.key.majority_rate": "0.125"}  # fmt: skip
    old = {k: v for k, v in _report("key", 0.5, "x").items() if k not in ("n_test", "ci_low", "ci_high")}
    assert "probe.key.ci_low" not in score_tags(old)  # a pre-evidence report: no empty tags


def test_log_probe_tags_versions_and_promote(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mert.cli import main
    from mert.probe.report import write_outputs
    from mert.probe.tracking import log_probe, promote
    from mert.tracking import connect

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    client, _ = connect(uri, "mert-probe")
    client.create_registered_model("mert")
    for alias in ("champion", "candidate"):
        v = client.create_model_version("mert", source=str(tmp_path / alias)).version
        client.set_registered_model_alias("mert", alias, v)
    assert promote("mert", ["key"], uri=uri).reason == "candidate has no probe score for ['key']"
    from mert.model import MERT, MERTConfig
    from mert.probe.models import ModelSpecError, load_model

    MERT(MERTConfig.from_name("mert-tiny")).save_pretrained(tmp_path / "candidate" / "export")
    model = load_model("models:/mert@candidate")  # resolved in place from the local artifact store
    assert model.identity["registry_uri"] == "models:/mert@candidate" and model.n_layers == 3
    with pytest.raises(ModelSpecError, match="not on this machine"):
        load_model("models:/mert/1")  # the champion's source directory does not exist
    (tmp_path / "champion").mkdir()
    with pytest.raises(ModelSpecError, match="no HF-layout encoder"):
        load_model("models:/mert/1")
    with pytest.raises(ModelSpecError, match="cannot resolve"):
        load_model("models:/mert@nobody")
    for alias, score in (("champion", 0.5), ("candidate", 0.7)):
        report = _report("key", score, f"models:/mert@{alias}")
        write_outputs(report | {"task": "key"}, tmp_path / alias / "results.json")
        run_id = log_probe(report, tmp_path / alias / "results.json", uri)
        run = client.get_run(run_id)
        assert run.data.metrics["test_score"] == score and run.data.tags["registered_model"] == "mert"
        assert run.data.metrics["n_test"] == 60 and run.data.metrics["ci_low"] == pytest.approx(score - 0.1)
        assert "C major" in run.data.tags["majority_baseline"]
        assert {a.path for a in client.list_artifacts(run_id)} >= {"results.json", "results.png"}
        assert log_probe(report, tmp_path / alias / "results.json", uri) == run_id  # a retry: recorded once
    exp = client.get_experiment_by_name("mert-probe").experiment_id
    assert len(client.search_runs([exp])) == 2
    version_tags = client.get_model_version_by_alias("mert", "candidate").tags
    assert version_tags["probe.key.key_weighted"] == "0.7" and version_tags["probe.key.ci_high"] == "0.8"
    assert version_tags["probe.key.n_test"] == "60" and version_tags["probe.key.majority_rate"] == "0.125"
    assert main(["promote", "--name", "mert", "--tasks", "key", "--dry-run"]) == 0
    assert "would promote" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("mert", "champion").version) == "1"
    assert promote("mert", ["key"], uri=uri, version="1", dry_run=True).reason == "version 1 already is the champion"
    decision = promote("mert", ["key"], uri=uri)
    assert decision.promoted and str(client.get_model_version_by_alias("mert", "champion").version) == "2"
    assert "already is the champion" in promote("mert", ["key"], uri=uri).reason
    json.dumps(decision.rows)
