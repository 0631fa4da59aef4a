import time

import pytest

from mert import tracking
from mert.tracking import DiskLogger, MLflowLogger, TrackingError, flatten, read_jsonl


def test_flatten_and_disk_logger(tmp_path):
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    lg = DiskLogger(tmp_path / "m.jsonl")
    lg.log_config({"x": 1})
    lg.log_dict({"loss/total": 2.0}, step=3)
    lg.close()
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"step": 4, "loss/to')  # a line cut by a kill
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 3, "loss/total": 2.0}]
    assert (tmp_path / "config.json").exists()


def test_mlflow_logger_params_metrics_tags(mlflow_uri):
    lg = MLflowLogger(mlflow_uri, "exp", run_name="r", tags={"git_commit": "abc"}, system_metrics=False)
    lg.log_config({"profile": {"lr": 0.1, "betas": (0.9, 0.98)}})
    lg.log_dict({"train/loss/total": 3.0, "optim/lr": 0.1}, step=1)
    lg.log_dict({"train/loss/total": 2.0}, step=2)
    lg.close()
    run = lg.client.get_run(lg.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["profile.lr"] == "0.1" and run.data.tags["git_commit"] == "abc"
    hist = lg.client.get_metric_history(lg.run_id, "train/loss/total")
    assert [(m.step, m.value) for m in hist] == [(1, 3.0), (2, 2.0)]


def test_tracking_hiccup_is_buffered_and_retried(mlflow_uri, monkeypatch, caplog):
    lg = MLflowLogger(mlflow_uri, "exp", system_metrics=False)
    real = lg.client.log_batch
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("tracking server restarting")
        return real(*a, **kw)

    monkeypatch.setattr(lg.client, "log_batch", flaky)
    lg.log_dict({"loss": 1.0}, step=1)  # fails: buffered, no exception
    lg.log_dict({"loss": 0.5}, step=2)  # fails again
    assert len(lg._pending) == 2 and "buffered" in caplog.text
    lg.log_dict({"loss": 0.25}, step=3)  # recovers and sends everything
    assert not lg._pending
    lg.close()
    hist = lg.client.get_metric_history(lg.run_id, "loss")
    assert sorted((m.step, m.value) for m in hist) == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_unreachable_tracking_is_a_clear_error_before_compute():
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="unreachable"):
        tracking.connect("http://127.0.0.1:9", "exp")
    assert time.perf_counter() - t0 < 30


def test_existing_run_and_nested_run(mlflow_uri):
    import mlflow

    client, exp = tracking.connect(mlflow_uri, "exp")
    outer = client.create_run(exp).info.run_id
    lg = MLflowLogger(mlflow_uri, "exp", run_id=outer, system_metrics=False)  # e.g. opened by a Prefect flow
    lg.log_dict({"x": 1.0}, step=0)
    lg.close()
    assert client.get_run(outer).info.status == "RUNNING"  # not ours to end
    assert client.get_metric_history(outer, "x")[0].value == 1.0
    with mlflow.start_run(run_id=outer):
        child = MLflowLogger(mlflow_uri, "exp", system_metrics=False)
        child.close()
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == outer


def test_dvc_out_hash(tmp_path):
    (tmp_path / "data/corpus").mkdir(parents=True)
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  ingest:\n    outs:\n    - path: data/corpus\n      md5: abc.dir\n"
    )
    assert tracking.dvc_out_hash(tmp_path / "data/corpus", tmp_path / "dvc.lock") == "abc.dir"
    assert tracking.dvc_out_hash(tmp_path / "data/other", tmp_path / "dvc.lock") is None
