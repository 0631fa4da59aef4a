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
    params["pretrain"]["profile"] = "mert-tiny"  # the machinery under test, not the demo's model
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


@pytest.mark.slow  # 2-3 min on 2 loaded cores: three `dvc repro pretrain` (ingest, label, pretrain)
def test_dvc_repro_retrains_when_the_corpus_changes_and_the_lock_tells_the_truth(tmp_path: Path):
    """A finished run is never taken for the run of a changed corpus: the stage trains a fresh run (the old one moves
    to <out>.superseded/), whose recorded lineage is the new corpus, the one dvc.lock records as the stage's dep."""
    import numpy as np
    import soundfile as sf

    from mert.utils.io import sha256_file

    def shrink(params: dict) -> None:
        params["corpus"]["source"] = "audio"
        params["pretrain"]["tracker"] = "disk"
        params["pretrain"]["profiles"]["mert-tiny"].update(
            max_steps=2, warmup_steps=1, save_interval=2, val_interval=0, val_batches=1, crop_samples=9600,
            min_clip_samples=24000, micro_batch_clips=2, batch_seconds=0.8, loader_prefetch=0)  # fmt: skip

    repo = _tiny_repo(tmp_path, shrink)
    (repo / "audio").mkdir()

    def add(name: str, freq: float) -> None:
        t = np.arange(4 * 24000) / 24000
        sf.write(repo / "audio" / name, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 24000)

    def lineage_is_true() -> dict:
        lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        corpus_md5 = next(o["md5"] for o in lock["ingest"]["outs"] if o["path"] == "data/corpus")
        assert next(d["md5"] for d in lock["pretrain"]["deps"] if d["path"] == "data/corpus") == corpus_md5
        run = json.loads((repo / "data/pretrain/mert-tiny/run.json").read_text())
        assert run["identity"]["corpus"]["manifest_sha256"] == sha256_file(repo / "data/corpus/manifest.csv")
        assert run["lineage"]["corpus_dvc_md5"] == corpus_md5
        assert json.loads((repo / "data/pretrain/mert-tiny/result.json").read_text())["step"] == 2
        return run

    for i, freq in enumerate((220.0, 330.0, 440.0)):
        add(f"clip{i}.wav", freq)
    _run(["dvc", "repro", "pretrain"], repo)
    first = lineage_is_true()
    assert first["identity"]["corpus"]["clips"] == 3

    add("clip3.wav", 550.0)  # the corpus changes under a finished run
    log = _run(["dvc", "repro", "pretrain"], repo)
    assert "Running stage 'pretrain'" in log and "already finished" not in log
    second = lineage_is_true()
    assert second["identity"]["corpus"]["clips"] == 4 and second["identity_sha256"] != first["identity_sha256"]
    (old,) = (repo / "data/pretrain/mert-tiny.superseded").glob("*-*")
    assert json.loads((old / "run.json").read_text()) == first
    assert "up to date" in _run(["dvc", "repro", "pretrain"], repo)
