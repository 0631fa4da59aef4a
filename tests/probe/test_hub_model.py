"""`mert probe --model <hub id>` and the pipeline's probe stage (what the flows call) take a Hugging Face hub id."""

from __future__ import annotations

import json

import pytest
import torch

from mert import MERT, MERTConfig, stages
from mert.cli import main
from mert.probe.params import ProbeParams
from tests.model.test_hub import REPO, SHA, write_hub_cache

FAST = dict(lrs=[1e-2], max_epochs=3, patience=2, hidden=16, bootstrap=50, cache_dir="")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    torch.manual_seed(0)
    write_hub_cache(tmp_path / "hf", MERT(MERTConfig.from_name("mert-tiny")), tmp_path / "custom-code-ran")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "custom-code-ran"


def test_probe_cli_and_stage_take_a_hub_id(offline_hub, folder_task, tmp_path, capsys):
    argv = ["probe", "--model", REPO, "--task", str(folder_task), "--out", str(tmp_path / "cli.json"), "--lrs",
            "1e-2", "--max-epochs", "3", "--cache-dir", "", "--params", str(tmp_path / "none.yaml")]  # fmt: skip
    assert main(argv) == 0
    assert f"{REPO}: best layer" in capsys.readouterr().out
    saved = json.loads((tmp_path / "cli.json").read_text())
    assert saved["model"]["hub_id"] == REPO and saved["model"]["hub_commit"] == SHA
    report = stages.probe(f"{REPO}@main", folder_task, tmp_path / "stage.json", ProbeParams(**FAST))
    assert report["model"]["hub_id"] == REPO and report["model"]["kind"] == "mert"
    assert not offline_hub.exists()  # the repo's custom code never ran
    argv[2] = "m-a-p/MERT-v1-330M"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "m-a-p/MERT-v1-330M" in err and "HF_HUB_OFFLINE=1" in err and "Traceback" not in err
