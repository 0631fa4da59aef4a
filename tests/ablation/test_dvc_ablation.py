"""``dvc repro ablation/dvc.yaml`` in a fresh git + DVC repo: 2 teachers x 2 CQT variants + baselines, tiny."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_dvc_pipeline import ROOT, _run, _tiny_repo

TASKS = ["key", "pitch"]


def _shrink(params: dict) -> None:
    params["probe"].update(lrs=[1e-3], max_epochs=3, patience=2, bootstrap=50)
    tiny = params["pretrain"]["profiles"]["mert-tiny"]
    tiny.update(warmup_steps=1, save_interval=2, val_interval=0)
    params["ablation"].update(profile="mert-tiny", max_steps=3, teachers=["rvq", "kmeans"], cqt=["with", "without"],
                              tasks=TASKS, baselines=["mfcc"], n_boot=50)  # fmt: skip


@pytest.mark.slow
def test_ablation_repro_writes_the_report_and_one_run_per_row(tmp_path: Path):
    repo = _tiny_repo(tmp_path, _shrink)
    (repo / "ablation").mkdir()
    shutil.copy(ROOT / "ablation" / "dvc.yaml", repo / "ablation")
    _run(["dvc", "repro", "ablation/dvc.yaml"], repo)

    report = json.loads((repo / "docs/results/ablation.json").read_text())
    assert (repo / "docs/results/ablation.md").exists() and (repo / "docs/results/ablation.png").exists()
    names = [r["name"] for r in report["rows"]]
    assert names == ["rvq-with", "rvq-without", "kmeans-with", "kmeans-without", "random", "mfcc"]
    for row in report["rows"]:
        assert set(row["scores"]) == set(TASKS)
        assert all((s["vs_random"] is None) == (row["name"] == "random") for s in row["scores"].values())
        if row["kind"] == "cell":
            assert row["pretrain"]["steps"] == 3 and len(row["pretrain"]["margins"]) == row["pretrain"]["codebooks"]
    t = report["timing"]
    assert all(t[k] is not None and t[k] > 0 for k in ("label_s", "pretrain_s", "probe_s", "stages_s"))

    # the CQT variant reached the trainer: the objective it logged
    for cell, weight in (("rvq-with", 1.0), ("rvq-without", 0.0), ("kmeans-without", 0.0)):
        config = json.loads((repo / f"data/ablation/pretrain/{cell}/config.json").read_text())
        teacher = cell.split("-")[0]
        assert config["objective"]["loss_weights"]["loss/cqt_mse"] == weight
        assert config["objective"]["loss_weights"][f"loss/{teacher}_ce"] == 1.0

    from mert.tracking import connect

    client, exp = connect(f"sqlite:///{repo / 'mlflow.db'}", "mert-ablation")
    runs = {r.info.run_name: r for r in client.search_runs([exp])}
    assert set(runs) == set(names)
    _, pre_exp = connect(f"sqlite:///{repo / 'mlflow.db'}", "mert-ablation-pretrain")
    pre_ids = {r.info.run_id for r in client.search_runs([pre_exp])}
    assert {runs[c].data.tags["pretrain_run_id"] for c in names[:4]} == pre_ids and len(pre_ids) == 4
    assert client.search_registered_models() == []  # a cell never becomes a registered candidate

    again = _run(["dvc", "repro", "ablation/dvc.yaml"], repo)
    assert "Data and pipelines are up to date" in again, again
