"""``probe()`` and ``mert probe`` end to end on tiny tasks: report files, skipped files, errors before extraction."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
    # the evidence: n, CI, majority rate, and the per-clip record two results are compared on
    clips = saved["test_clips"]
    assert saved["n_test"] == 6 == len(clips["keys"]) == len(clips["scores"]) and len(clips["pred"]) == 6
    assert all(k.startswith("test/") and k.endswith(".wav") for k in clips["keys"])  # relative to the task root
    assert sum(clips["scores"]) / 6 == pytest.approx(saved["test_score"])
    assert 0 <= saved["ci_low"] <= saved["ci_high"] <= 1
    assert saved["majority_rate"] == pytest.approx(2 / 6) and "most frequent train class" in saved["majority_baseline"]
    assert saved["evidence"]["n_boot"] == 1000 and "per-clip scores" in saved["evidence"]["method"]
    assert {k: metrics[k] for k in ("n_test", "ci_low", "ci_high", "majority_rate")} == {
        k: saved[k] for k in ("n_test", "ci_low", "ci_high", "majority_rate")}  # fmt: skip
    again = probe("random:mert-tiny", folder_task, out, params)  # features from the cache, same numbers
    assert again["timing"]["features_cached"] and again["per_layer"] == saved["per_layer"]


def test_beat_tracking_end_to_end(csv_task, tmp_path):
    report = probe("mfcc", csv_task("beats"), tmp_path / "r.json", ProbeParams(**FAST, cache_dir=""))
    assert report["task_kind"] == "beats" and report["metric"] == "beat_f1"
    assert 0.0 <= report["test_score"] <= 1.0 and "threshold" in report["test_metrics"]
    assert report["n_test"] == 3 and 0.0 <= report["majority_rate"] <= 1.0 and "BPM" in report["majority_baseline"]


def test_cli(csv_task, tmp_path, capsys):
    root = csv_task("regression")
    argv = ["probe", "--model", "mfcc", "--task", str(root), "--out", str(tmp_path / "r.json"), "--lrs", "1e-2",
            "--max-epochs", "5", "--cache-dir", "", "--params", str(tmp_path / "none.yaml")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["test_metrics"].keys() >= {"r2", "r2_freq", "r2_loud"}
    assert "best layer 0" in out and f"test r2 {saved['test_score']:.3f} [" in out and "(95% CI), n test 3" in out
    assert f"majority rate {saved['majority_rate']:.3f} (always the train mean)" in out
    assert "pred" in saved["test_clips"] and len(saved["test_clips"]["truth"]) == 3  # R2: predictions, not scores
    argv[2], argv[6] = "chroma", str(tmp_path / "chroma.json")
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["probe-compare", str(tmp_path / "r.json"), str(tmp_path / "chroma.json"), "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "mfcc vs chroma on csv-regression: " in out and "paired bootstrap over 3 common test clips" in out
    assert any(v in out for v in ("-> beats chroma", "-> worse than chroma", "-> no difference detectable"))
    assert main(["probe-compare", str(tmp_path / "r.json"), str(tmp_path / "missing.json")]) == 1
    assert "cannot read a probe results file" in capsys.readouterr().err


def test_cli_reports_task_errors_before_extraction(folder_task, tmp_path, capsys):
    (folder_task / "train" / "empty").mkdir()
    argv = ["probe", "--model", "random:mert-tiny", "--task", str(folder_task), "--out", str(tmp_path / "r.json")]
    assert main(argv) == 1
    assert "empty class directory" in capsys.readouterr().err


def test_probe_package_imports_without_mlflow():
    code = "import sys, mert.probe, mert.probe.api, mert.probe.commands; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_probes_in_threads_give_the_numbers_of_probes_one_at_a_time(folder_task, csv_task, tmp_path):
    """The pipeline runs probes side by side in threads: features and probes must not depend on it."""
    import threading

    import torch

    jobs = [("random:mert-tiny", folder_task), ("random:mert-tiny@1", csv_task("multiclass"))]
    params = ProbeParams(**FAST, cache_dir="")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what the flow's process has; the probes use probe.threads (1)
    try:
        alone = [probe(m, t, tmp_path / f"alone-{i}.json", params) for i, (m, t) in enumerate(jobs)]
        together: dict[int, dict] = {}

        def run(i):
            together[i] = probe(jobs[i][0], jobs[i][1], tmp_path / f"together-{i}.json", params)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        [t.start() for t in threads]
        [t.join(300) for t in threads]
    finally:
        torch.set_num_threads(before)
    for i, a in enumerate(alone):
        assert together[i]["per_layer"] == a["per_layer"] and together[i]["per_layer_test"] == a["per_layer_test"]
        assert together[i]["test_clips"]["scores"] == a["test_clips"]["scores"]
