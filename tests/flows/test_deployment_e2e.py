"""End to end on loopback: a real Prefect server, work pool and process worker (infra/local scripts),
`prefect deploy` from prefect.yaml, `prefect deployment run 'mert-pipeline/demo'`, and a flow run that
completes and leaves a registered model version with lineage and probe-score tags in MLflow."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_project(dst: Path) -> None:
    """A project dir the worker runs from: the repo's flows, prefect.yaml and a tiny params.yaml."""
    for name in ("flows", "prefect.yaml"):
        src = ROOT / name
        (shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, dst / name))  # fmt: skip
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(n_clips=3, min_seconds=5.0, max_seconds=6.0, task_clips=24)  # rendered real scores
    params["probe"].update(lrs=[1e-3], max_epochs=3, patience=2)
    params["pretrain"]["profile"] = "mert-tiny"  # the machinery under test, not the demo's model
    prof = params["pretrain"]["profiles"]["mert-tiny"]
    prof.update(max_steps=6, warmup_steps=2, save_interval=3, val_interval=0, batch_seconds=8.0)
    (dst / "params.yaml").write_text(yaml.safe_dump(params))
    deploy = yaml.safe_load((dst / "prefect.yaml").read_text())
    deploy["deployments"][0]["parameters"].update(baselines=["mfcc"], probe_tasks=["data/demo/tasks/instrument"])
    (dst / "prefect.yaml").write_text(yaml.safe_dump(deploy, sort_keys=False))


def test_prefect_deployment_run_completes_and_registers_a_version(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    _tiny_project(project)
    env = {
        **os.environ,
        "MERT_PROJECT_DIR": str(project),
        "MERT_LOCAL_STATE": str(tmp_path / "state"),
        "MERT_VENV": str(Path(sys.executable).parent.parent),
        "PREFECT_PORT": str(_free_port()),
        "WORKER_PORT": str(_free_port()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        r = subprocess.run(["bash", str(ROOT / "infra/local/deploy-demo.sh")], env=env, capture_output=True,
                           text=True, timeout=1500)  # fmt: skip
        log = r.stdout[-4000:] + r.stderr[-4000:]
        worker_log = tmp_path / "state/worker.log"
        if worker_log.exists():
            log += "\n--- worker ---\n" + worker_log.read_text()[-6000:]
        assert r.returncode == 0, log
        assert "Completed" in r.stdout, log
    finally:
        subprocess.run(["bash", str(ROOT / "infra/local/stop.sh")], env=env, timeout=120)

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the registry an earlier test set globally
    version = client.get_model_version_by_alias("mert-tiny", "candidate")
    tags = version.tags
    for lineage in ("git_commit", "corpus_manifest_sha256", "teacher", "teacher_hash", "run_id", "profile"):
        assert tags.get(lineage), (lineage, tags)
    assert tags["teacher"] == "rvq-random-projection"  # the offline teacher is named as such, never hidden
    assert tags["probe.instrument.metric"] == "accuracy" and 0.0 <= float(tags["probe.instrument.accuracy"]) <= 1.0
    assert str(client.get_registered_model("mert-tiny").aliases["champion"]) == str(version.version)  # first wins
    assert (project / "data/probe/mert-tiny/instrument").is_dir()
