"""End to end: ``pretrain()`` trains, checkpoints, exports, logs an MLflow run and registers a candidate."""

import dataclasses
import json

import numpy as np

from mert.train import pretrain
from mert.train.params import PretrainParams
from tests.train.conftest import tiny_profile


def test_pretrain_logs_run_and_registers_candidate(corpus_dir, tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    params = PretrainParams(profile="mert-tiny", tracking_uri=mlflow_uri, experiment="test")
    params.profiles["mert-tiny"] = tiny_profile(max_steps=2, log_interval=1)
    res = pretrain(corpus_dir, "hash:8:1024", tmp_path / "run", params)

    assert res["step"] == 2 and res["registered_model"] == "mert-tiny" and res["registered_version"] == "1"
    assert json.loads((tmp_path / "run/result.json").read_text())["run_id"] == res["run_id"]
    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    run = client.get_run(res["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["profile.crop_samples"] == "9600" and run.data.params["profile.betas"] == "(0.9, 0.98)"
    for tag in ("git_commit", "corpus_manifest_sha256", "teacher", "teacher_hash"):
        assert run.data.tags[tag], tag
    assert len(client.get_metric_history(res["run_id"], "train/loss/total")) == 2
    mv = client.get_model_version_by_alias("mert-tiny", "candidate")
    assert str(mv.version) == "1" and mv.tags["run_id"] == res["run_id"] and mv.tags["step"] == "2"
    assert mv.tags["teacher"] == "hash" and mv.tags["corpus_manifest_sha256"] == run.data.tags["corpus_manifest_sha256"]

    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model("models:/mert-tiny@candidate")
    feats = model.predict(np.zeros((1, 24000), dtype=np.float32))
    assert feats.shape == (1, 3, 74, 32)  # (B, layers + 1, frames of 1 s, hidden)

    again = pretrain(corpus_dir, "hash:8:1024", tmp_path / "run", params)  # rerun of a finished run: no-op
    assert again["registered_version"] == "1"
    assert dataclasses.asdict(params.resolve())["max_steps"] == 2

    longer = pretrain(corpus_dir, "hash:8:1024", tmp_path / "run", params, max_steps=3)  # resume, same run
    assert longer["step"] == 3 and longer["run_id"] == res["run_id"] and longer["registered_version"] == "2"
    assert client.get_run(res["run_id"]).info.status == "FINISHED"
    assert str(client.get_model_version_by_alias("mert-tiny", "candidate").version) == "2"
