"""Continued pretraining from a released-layout checkpoint (``--init-from``): the encoder starts from its weights,
heads / optimiser / schedule are fresh, and the parent is in the run's lineage and on the registered version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mert.data.shards import Corpus
from mert.model import MERT, MERTConfig
from mert.train import pretrain
from mert.train.api import RunIdentityError
from mert.train.distributed import DistInfo
from mert.train.init_from import state_sha256
from mert.train.labels import HashLabels
from mert.train.optim import lr_factor
from mert.train.params import PretrainParams
from mert.train.trainer import Trainer
from tests.train.conftest import tiny_profile

LABELS = "hash:8:1024"


@pytest.fixture
def parent(tmp_path):
    """A tiny encoder with its own (non-default) weights, saved in the released HF layout."""
    torch.manual_seed(123)
    model = MERT(MERTConfig.from_name("mert-tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # far from any seeded init
    path = tmp_path / "parent"
    model.save_pretrained(path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def test_init_from_gives_the_parent_encoder_at_step_0_and_fresh_heads(parent, corpus_dir, tmp_path):
    path, weights = parent
    corpus, labels = Corpus(corpus_dir), HashLabels(8, 1024)
    t = Trainer(tiny_profile(init_from=str(path)), corpus, labels, tmp_path / "a", DistInfo()).setup()
    scratch = Trainer(tiny_profile(), corpus, labels, tmp_path / "b", DistInfo()).setup()
    enc = t.raw_model.mert.state_dict()
    assert t.step == 0 and enc.keys() == weights.keys()
    assert all(torch.equal(enc[k], weights[k]) for k in weights)
    heads = {k: v for k, v in t.raw_model.state_dict().items() if not k.startswith("mert.")}
    ref = scratch.raw_model.state_dict()
    assert heads and all(torch.equal(v, ref[k]) for k, v in heads.items())  # the seeded fresh heads of a new run
    assert not t.optimizer.state  # fresh optimiser
    assert t.scheduler.get_last_lr()[0] == pytest.approx(t.p.lr * lr_factor(0, t.p))  # schedule at its start


def test_init_from_records_the_parent_and_tags_the_registered_version(parent, corpus_dir, tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    path, weights = parent
    params = PretrainParams(profile="mert-tiny", tracking_uri=mlflow_uri, experiment="test")
    params.profiles["mert-tiny"] = tiny_profile(max_steps=1)
    res = pretrain(corpus_dir, LABELS, tmp_path / "run", params, init_from=str(path))
    lineage = json.loads((tmp_path / "run/run.json").read_text())["lineage"]
    sha = state_sha256(weights)
    assert lineage["parent"] == {"source": str(path), "path": str(path.resolve()), "weights_sha256": sha}

    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    mv = client.get_model_version("mert-tiny", res["registered_version"])
    assert mv.tags["parent_model"] == str(path) and mv.tags["parent_model_sha256"] == state_sha256(weights)
    assert client.get_run(res["run_id"]).data.tags["parent_model"] == str(path)

    with pytest.raises(RunIdentityError, match=rf"initialisation changed: this run's encoder started from {path}"):
        pretrain(corpus_dir, LABELS, tmp_path / "run", params)  # the same directory without --init-from


def test_init_from_refuses_another_architecture_by_name(corpus_dir, tmp_path):
    wide = MERT(MERTConfig.from_name("mert-tiny", hidden_size=48, intermediate_size=96))
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match=r"not the architecture of profile 'mert-tiny': hidden_size 48 .* vs 32"):
        Trainer(tiny_profile(init_from=str(tmp_path / "wide")), Corpus(corpus_dir), HashLabels(8, 1024), tmp_path / "a",
                DistInfo()).setup()  # fmt: skip
    with pytest.raises(FileNotFoundError, match="--init-from"):
        pretrain(corpus_dir, LABELS, tmp_path / "run", PretrainParams(tracker="disk"), init_from=str(tmp_path / "no"))


def test_cli_init_from_a_hub_id_in_the_cache(corpus_dir, tmp_path, monkeypatch):
    """``mert pretrain ... --init-from ORG/NAME``: the parent comes from the Hugging Face cache (offline, its custom
    code never run) through the same loader as ``MERT.from_pretrained``, and is recorded in the run's lineage."""
    import dataclasses

    import yaml

    from mert.cli import main
    from tests.model.test_hub import REPO, write_hub_cache

    torch.manual_seed(7)
    model = MERT(MERTConfig.from_name("mert-tiny")).eval()
    sentinel = tmp_path / "custom-code-ran"
    write_hub_cache(tmp_path / "hf", model, sentinel)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    tiny = json.loads(json.dumps(dataclasses.asdict(tiny_profile(max_steps=1)), default=list))
    params["pretrain"].update(profile="mert-tiny", tracker="disk", register=False)
    params["pretrain"]["profiles"]["mert-tiny"] = tiny
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    out = tmp_path / "run"
    main(["pretrain", str(corpus_dir), LABELS, str(out), "--init-from", REPO, "--params", str(tmp_path / "params.yaml"),
          "--device", "cpu"])  # fmt: skip
    parent = json.loads((out / "run.json").read_text())["lineage"]["parent"]
    assert parent["source"] == REPO and parent["weights_sha256"] == state_sha256(model.state_dict())
    assert parent["path"] is None and not sentinel.exists()  # a hub id, not a local directory
