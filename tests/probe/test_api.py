"""``probe()`` and ``mert probe`` end to end on tiny tasks: report files, skipped files, errors before extraction."""

from __future__ import annotations

import json
import subprocess
import sys

from mert.cli import main
from mert.probe import probe
from mert.probe.params import ProbeParams

FAST = dict(lrs=[1e-2], max_epochs=15, patience=5, hidden=32)


def test_probe_writes_results_plot_and_dvc_metrics(folder_task, tmp_path):
    (folder_task / "train" / "low" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    params = ProbeParams(**FAST, cache_dir=str(tmp_path / "cache"))
    out = tmp_path / "out" / "results.json"
    report = probe("random:mert-tiny", folder_task, out, params)
    saved = json.loads(out.read_text())
    assert saved["task"] == "folder" and saved["metric"] == "accuracy"
    assert set(saved["per_layer"]) == {"0", "1", "2", "weighted"} and saved["best_layer"] in saved["per_layer"]
    assert saved["test_score"] == report["test_score"] == saved["test_metrics"]["accuracy"]
    assert saved["n_clips"] == {"train": 9, "valid": 6, "test": 6} and saved["n_skipped"] == 1
    assert "broken.wav" in next(iter(saved["skipped"]))
    assert saved["model"]["kind"] == "random" and saved["model"]["label"] == "random:mert-tiny"
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((tmp_path / "out" / "results.metrics.json").read_text())
    assert metrics["test_score"] == saved["test_score"] and "valid/layer_weighted" in metrics
    again = probe("random:mert-tiny", folder_task, out, params)  # features from the cache, same numbers
    assert again["timing"]["features_cached"] and again["per_layer"] == saved["per_layer"]


def test_beat_tracking_end_to_end(csv_task, tmp_path):
    report = probe("mfcc", csv_task("beats"), tmp_path / "r.json", ProbeParams(**FAST, cache_dir=""))
    assert report["task_kind"] == "beats" and report["metric"] == "beat_f1"
    assert 0.0 <= report["test_score"] <= 1.0 and "threshold" in report["test_metrics"]


def test_cli(csv_task, tmp_path, capsys):
    root = csv_task("regression")
    argv = ["probe", "--model", "mfcc", "--task", str(root), "--out", str(tmp_path / "r.json"), "--lrs", "1e-2",
            "--max-epochs", "5", "--cache-dir", "", "--params", str(tmp_path / "none.yaml")]  # fmt: skip
    assert main(argv) == 0
    assert "best layer 0, test r2" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["test_metrics"].keys() >= {"r2", "r2_freq", "r2_loud"}


def test_cli_reports_task_errors_before_extraction(folder_task, tmp_path, capsys):
    (folder_task / "train" / "empty").mkdir()
    argv = ["probe", "--model", "random:mert-tiny", "--task", str(folder_task), "--out", str(tmp_path / "r.json")]
    assert main(argv) == 1
    assert "empty class directory" in capsys.readouterr().err


def test_probe_package_imports_without_mlflow():
    code = "import sys, mert.probe, mert.probe.api, mert.probe.commands; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
