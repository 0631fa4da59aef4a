"""``dvc repro iteration/dvc.yaml`` in a fresh git + DVC repo: the main pipeline's model, then HuBERT iteration 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_dvc_pipeline import ROOT, _run, _tiny_repo


def _shrink(params: dict) -> None:
    params["probe"].update(lrs=[1e-3], max_epochs=3, patience=2, bootstrap=50)
    params["pretrain"]["profiles"]["mert-tiny"].update(max_steps=3, warmup_steps=1, save_interval=2, val_interval=0)
    params["label"]["hidden"].update(n_clusters=16, n_init=1, max_iter=5)


@pytest.mark.slow  # 3-5 min on 2 loaded cores: renders the demo, trains two models, probes four tasks
def test_iteration_repro_labels_with_the_first_models_hidden_state_and_trains_again(tmp_path: Path):
    repo = _tiny_repo(tmp_path, _shrink)
    (repo / "iteration").mkdir()
    shutil.copy(ROOT / "iteration" / "dvc.yaml", repo / "iteration")
    _run(["dvc", "repro", "iteration/dvc.yaml"], repo)

    summary = json.loads((repo / "metrics/label-iter2.json").read_text())
    assert summary["teacher"].startswith("hidden-") and summary["computed"] == 3
    (store,) = (repo / "data/labels-iter2").glob("hidden-*/teacher.json")  # beside hidden-models/ (the k-means)
    ident = json.loads(store.read_text())
    assert ident["lineage"]["parent"]["source"] == "data/pretrain/mert-tiny/export"
    assert ident["lineage"]["iteration"] == 2 and ident["config"]["layer"] == 1  # mert-tiny: 2 layers, null -> 1
    run = json.loads((repo / "data/pretrain/mert-tiny-iter2/run.json").read_text())
    assert run["identity"]["labels"]["hash"] == ident["hash"]
    assert run["lineage"]["teacher_lineage"]["parent"]["weights_sha256"] == ident["config"]["parent_weights_sha256"]
    for task in ("key", "instrument", "pitch", "tempo"):
        assert json.loads((repo / f"data/probe-iter2/{task}/results.json").read_text())["task"] == task
    assert not (repo / "data/probe").exists()  # the main pipeline's probes are not iteration 2's inputs

    again = _run(["dvc", "repro", "iteration/dvc.yaml"], repo)
    assert "Data and pipelines are up to date" in again, again
    stages = _run(["dvc", "stage", "list"], repo)  # the main pipeline file: unchanged by the iteration
    assert "label-iter2" not in stages and "iter2" not in stages
