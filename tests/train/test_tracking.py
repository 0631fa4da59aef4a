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
    (row,) = read_jsonl(tmp_path / "m.jsonl")
    assert row.pop("time_ms") > 0 and row == {"step": 3, "loss/total": 2.0}
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


def test_journal_drops_a_cut_tail_and_the_steps_a_resumed_run_recomputes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lg = DiskLogger(path)
    lg.log_dict({"train/loss": 3.0}, step=1)
    lg.log_dict({"train/loss": 2.0}, step=2)
    lg.log_dict({"val/loss": 2.5}, step=2)
    lg.close()
    with open(path, "a") as f:
        f.write('{"step": 3, "train/lo')  # killed mid-line
    lg = DiskLogger(path)  # the resumed run (its checkpoint was step 1): recomputes step 2 with the same values
    assert path.read_text().endswith("}\n")  # the cut line is gone, not glued to the next one
    lg.log_dict({"train/loss": 2.0}, step=2)
    lg.log_dict({"val/loss": 2.5, "val/new": 1.0}, step=2)
    lg.log_dict({"train/loss": 1.0}, step=3)
    lg.close()
    rows = [{k: v for k, v in r.items() if k != "time_ms"} for r in read_jsonl(path)]
    assert rows == [
        {"step": 1, "train/loss": 3.0},
        {"step": 2, "train/loss": 2.0},
        {"step": 2, "val/loss": 2.5},
        {"step": 2, "val/new": 1.0},
        {"step": 3, "train/loss": 1.0},
    ]
    assert lg.dropped == 2


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_journal_outlives_a_tracker_outage_and_a_reopen_completes_the_run(mlflow_uri, tmp_path, monkeypatch, caplog):
    """The tracker fails from the start of training to the end of the process: nothing blocks, nothing raises; close
    says what was not sent and leaves the run RUNNING; reopening the run (what rerunning `mert pretrain` does) sends
    the journal, once, and ends the run."""
    journal = tmp_path / "run/metrics.jsonl"
    lg = MLflowLogger(mlflow_uri, "exp", run_name="r", system_metrics=False, journal=journal)
    real = lg.client.log_batch

    def down(*a, **kw):
        raise ConnectionError("tracking server is down")

    monkeypatch.setattr(lg.client, "log_batch", down)
    t0 = time.perf_counter()
    for step in range(1, 6):
        lg.log_dict({"train/loss": 1.0 / step}, step=step)
    lg.log_config({"profile": {"lr": 0.1}})
    lg.set_tags({"git_commit": "abc"})
    assert time.perf_counter() - t0 < 1.0  # training never waits for the tracker
    unsent = lg.close(wait=0.5)
    assert any("5 metric values of steps 1-5" in u for u in unsent) and any("RUNNING" in u for u in unsent)
    assert "could not be reached" in caplog.text
    assert lg.client.get_run(lg.run_id).info.status == "RUNNING"
    monkeypatch.setattr(lg.client, "log_batch", real)
    assert _history(lg.client, lg.run_id, "train/loss") == []

    again = MLflowLogger(mlflow_uri, "exp", run_id=lg.run_id, own_run=True, system_metrics=False, journal=journal)
    again.log_dict({"train/loss": 1.0 / 5}, step=5)  # a resumed run recomputing a journaled step: not sent twice
    again.log_dict({"train/loss": 1.0 / 6}, step=6)
    assert again.close() == []
    run = again.client.get_run(lg.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"profile.lr": "0.1"} and run.data.tags["git_commit"] == "abc"
    assert _history(again.client, lg.run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 7)]


def test_sending_the_journal_again_records_each_value_once(mlflow_uri, tmp_path):
    journal = tmp_path / "metrics.jsonl"
    lg = MLflowLogger(mlflow_uri, "exp", system_metrics=False, journal=journal)
    for step in (1, 2, 3):
        lg.log_dict({"x": float(step)}, step=step)
    assert lg.close() == []
    (journal.with_name("metrics.mlflow.json")).unlink()  # a kill between a send and the cursor update, at worst
    again = MLflowLogger(mlflow_uri, "exp", run_id=lg.run_id, own_run=True, system_metrics=False, journal=journal)
    assert again.close() == []
    assert _history(again.client, lg.run_id, "x") == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_a_refused_request_is_dropped_not_retried_forever(mlflow_uri, tmp_path, caplog):
    journal = tmp_path / "metrics.jsonl"
    lg = MLflowLogger(mlflow_uri, "exp", system_metrics=False, journal=journal)
    lg.log_config({"lr": 0.1})
    lg.log_config({"lr": 0.2})  # MLflow params are immutable: a 400, which no retry can fix
    lg.log_dict({"x": 1.0}, step=1)
    assert lg.close(wait=0) == []
    assert "refused params" in caplog.text
    assert lg.client.get_run(lg.run_id).data.params == {"lr": "0.1"}
    assert _history(lg.client, lg.run_id, "x") == [(1, 1.0)]


FIRST_USE = """
import sys, time
from pathlib import Path
from mert import tracking
import mlflow.tracking  # the slow imports, before the gate
Path(sys.argv[3]).touch()
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
client, exp = tracking.connect(sys.argv[1], "exp")
print(exp)
"""


def test_two_processes_opening_a_new_sqlite_store_at_once_both_succeed(tmp_path):
    """Reproduced before the fix: the second process died in the schema migration (`table latest_metrics already
    exists` / `Online migration expected to match one row`), which MLflow runs on the first use of a sqlite file."""
    import subprocess
    import sys

    from tests.train.helpers import REPO, env

    uri, go = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_USE, uri, str(go), str(r)], cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]  # fmt: skip
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready):  # both have imported mlflow and wait at the gate
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert outs[0][0] == outs[1][0]  # one experiment, found or created by each
