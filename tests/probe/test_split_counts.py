"""A probe whose split loses clips says so: n per split against the task's, and a silent clip is called silent."""

from __future__ import annotations

import json

import numpy as np

from mert.cli import main
from tests.probe.conftest import write_wav


def test_probe_output_shows_the_clips_each_split_lost(folder_task, tmp_path, capsys):
    victim = sorted((folder_task / "test").rglob("*.wav"))[0]
    write_wav(victim, np.zeros(12000, np.float32))  # digital silence
    argv = ["probe", "--model", "mfcc", "--task", str(folder_task), "--out", str(tmp_path / "r.json"), "--lrs",
            "1e-2", "--max-epochs", "3", "--cache-dir", "", "--params", str(tmp_path / "none.yaml")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "clips per split: train 9, valid 6, test 5 of 6 (1 lost)" in out
    assert "skipped 1 file(s): silent x1" in out and f"{victim}: silent (digital silence: every sample is 0)" in out
    assert "-inf" not in out and "unreadable" not in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["n_clips"]["test"] == 5 and saved["n_clips_task"]["test"] == 6 and saved["n_test"] == 5
