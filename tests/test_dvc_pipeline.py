"""`dvc repro` runs the shipped dvc.yaml in a fresh git repo, and a second run does nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _tiny_repo(tmp_path: Path, edit=None) -> Path:
    """A fresh git + DVC repo with the shipped dvc.yaml, the library, and params.yaml shrunk for a test."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copytree(ROOT / "mert", repo / "mert", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(n_clips=3, min_seconds=5.0, max_seconds=6.0, task_clips=24)  # rendered real scores
    if edit:
        edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    return repo


def test_dvc_repro_runs_the_stages_and_is_then_up_to_date(tmp_path: Path):
    repo = _tiny_repo(tmp_path)
    _run(["dvc", "repro", "demo_corpus", "ingest"], repo)
    summary = json.loads((repo / "metrics/ingest.json").read_text())
    assert (summary["found"], summary["ingested"], summary["rejected"]) == (6, 3, 3)
    assert (repo / "data/corpus/manifest.csv").exists() and (repo / "dvc.lock").exists()
    again = _run(["dvc", "repro", "demo_corpus", "ingest"], repo)
    assert "didn't change, skipping" in again
    assert "ingest" in _run(["dvc", "metrics", "show"], repo)


@pytest.mark.slow
def test_full_dvc_repro_then_nothing_to_do(tmp_path: Path):
    """demo -> ingest -> label -> pretrain -> probe with tiny settings; the second repro does nothing."""

    def shrink(params: dict) -> None:
        params["probe"].update(lrs=[1e-3], max_epochs=3, patience=2)
        tiny = params["pretrain"]["profiles"]["mert-tiny"]
        tiny.update(max_steps=4, warmup_steps=1, save_interval=2, val_interval=0)

    repo = _tiny_repo(tmp_path, shrink)
    _run(["dvc", "repro"], repo)
    for task in ("key", "instrument", "pitch", "tempo"):
        results = json.loads((repo / f"data/probe/{task}/results.json").read_text())
        assert results["task"] == task and "test_score" in results
        assert (repo / f"data/probe/{task}/results.png").exists()
    assert (repo / "data/pretrain/mert-tiny/export/config.json").exists()
    again = _run(["dvc", "repro"], repo)
    assert "Data and pipelines are up to date" in again, again
    shown = _run(["dvc", "metrics", "show"], repo)
    assert "probe-key.json" in shown and "label.json" in shown
