"""``benchmarks/gpu_check.py``: a clear, immediate "no GPU" exit here; its CPU smoke run exercises every section."""

import json
import subprocess
import sys

import pytest

from tests.train.helpers import REPO, env

SCRIPT = str(REPO / "benchmarks" / "gpu_check.py")


def test_without_a_gpu_it_stops_at_once_and_says_why(tmp_path):
    out = tmp_path / "check.json"
    res = subprocess.run([sys.executable, SCRIPT, "--out", str(out)], env={**env(), "CUDA_VISIBLE_DEVICES": ""},
                         cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "gpu_check: no GPU: " in res.stderr and "Nothing was measured" in res.stderr
    assert not out.exists()


@pytest.mark.slow  # ~20-60 s on 2 loaded cores: mert-tiny steps, both CQTs, EnCodec labelling, on the CPU
def test_smoke_run_measures_every_section(tmp_path):
    out = tmp_path / "check.json"
    res = subprocess.run([sys.executable, SCRIPT, "--smoke", "--no-compile", "--out", str(out)], env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["errors"] == [] and [s["what"] for s in data["skipped"]] == ["train mert-tiny compile"]
    train = data["sections"]["train"]
    assert [(r["model"], r["loader_workers"] > 0) for r in train] == [("mert-tiny", True), ("mert-tiny", False)]
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_wait_share"] < 1 for r in train)
    assert train[0]["max_micro_batch"] >= 2
    assert [r["name"] for r in data["sections"]["cqt"]] == ["nnAudio CQT [cpu]", "FastCQT [cpu]"]
    assert data["sections"]["cqt"][1]["max_rel_err_vs_nnaudio"] < 1e-4
    assert all(r["x_realtime"] > 0 for r in data["sections"]["encodec"]) and len(data["sections"]["encodec"]) == 5
    assert "| model | compile | workers |" in res.stdout
