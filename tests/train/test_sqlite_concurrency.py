"""The embedded default store (sqlite ``mlflow.db``) with processes logging into it at once.

What happened before the fix (reproduced): two processes opening a new ``mlflow.db`` together both ran MLflow's schema
migration, and the second died (``table latest_metrics already exists`` for ``mert pretrain``, ``Online migration
expected to match one row`` for ``mert probe``), with a message that told the user to start a server. Now the first
use of a sqlite store is migrated under a file lock, the experiment creation race is absorbed, and writes that meet a
locked database are retried (SQLite's busy timeout, then the logger's retries).
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time

import pytest

from tests.train.conftest import tiny_profile
from tests.train.helpers import REPO, env, write_params

pytestmark = pytest.mark.slow


def test_two_pretrains_and_two_probes_log_into_one_new_mlflow_db_at_once(corpus_dir, demo_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"  # does not exist yet: every process may be the one that creates it
    uri = f"sqlite:///{db}"
    params = write_params(tmp_path / "params.yaml", tiny_profile(max_steps=6, log_interval=1), tracker="mlflow")
    run_env = {**env(), "MLFLOW_TRACKING_URI": uri}
    cmds = [[sys.executable, "-m", "mert.cli", "pretrain", str(corpus_dir), "hash:8:1024", str(tmp_path / f"run{i}"),
             "--params", str(params), "--device", "cpu"] for i in (1, 2)]  # fmt: skip
    cmds += [[sys.executable, "-m", "mert.cli", "probe", "--model", "mfcc", "--task", str(demo_dir / "tasks" / task),
              "--out", str(tmp_path / f"probe-{task}/results.json"), "--mlflow", "--params", str(params)]
             for task in ("pitch", "key")]  # fmt: skip
    t0 = time.monotonic()
    procs = [subprocess.Popen(c, cwd=REPO, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]  # fmt: skip
    outs = [p.communicate(timeout=900) for p in procs]
    print(f"\n4 processes on one new mlflow.db: {time.monotonic() - t0:.0f} s")
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "database is locked" not in err and "Traceback" not in err, err[-3000:]

    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("mert-pretrain").experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.params["profile.max_steps"] == "6"
        counts = collections.Counter(m.step for m in client.get_metric_history(run.info.run_id, "train/loss/total"))
        assert sorted(counts) == list(range(1, 7)) and set(counts.values()) == {1}, counts
    versions = client.search_model_versions("name = 'test'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)
    assert str(client.get_registered_model("test").aliases["candidate"]) == "2"  # the newest, in either order
    probes = client.search_runs([client.get_experiment_by_name("mert-probe").experiment_id])
    assert sorted(p.data.tags["task"] for p in probes) == ["key", "pitch"]
    assert all(p.info.status == "FINISHED" and "test_score" in p.data.metrics for p in probes)
