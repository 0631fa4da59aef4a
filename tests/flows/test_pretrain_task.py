"""The flow's pretrain task after the corpus changed under a finished run: a fresh run, never "already finished"."""

from __future__ import annotations

import json
import shutil

import pytest
import soundfile as sf

from tests.conftest import sine

pytest.importorskip("prefect")


def test_pretrain_task_retrains_when_the_corpus_changed(demo_dir, corpus_dir, tmp_path, monkeypatch):
    from flows.pipeline import pretrain_task
    from mert.data.ingest import IngestParams, ingest
    from mert.train import identity
    from mert.train.params import PretrainParams
    from mert.utils.io import sha256_file
    from tests.train.conftest import tiny_profile

    raw, corpus, out = tmp_path / "raw", tmp_path / "corpus", tmp_path / "data/pretrain/test"
    shutil.copytree(demo_dir / "raw", raw)
    shutil.copytree(corpus_dir, corpus)
    params = PretrainParams(profile="test", profiles={"test": tiny_profile(max_steps=1)}, tracker="disk")
    task = pretrain_task.fn  # the task's body, without a Prefect run context
    code = identity.code_identity()  # fixed for the test: others may edit the shared tree meanwhile
    monkeypatch.setattr(identity, "code_identity", lambda root=None: code)

    first = task(str(corpus), "hash:8:1024", str(out), params, 1, "params.yaml", None)
    assert task(str(corpus), "hash:8:1024", str(out), params, 1, "params.yaml", None) == first  # same run: no-op
    old = json.loads((out / "run.json").read_text())

    sf.write(raw / "added.wav", sine(4.0, freq=330.0), 24000)
    assert ingest(raw, corpus, IngestParams(workers=1), progress=False).ingested == 1
    second = task(str(corpus), "hash:8:1024", str(out), params, 1, "params.yaml", None)
    new = json.loads((out / "run.json").read_text())
    assert second["step"] == 1 and new["identity_sha256"] != old["identity_sha256"]
    assert new["identity"]["corpus"]["manifest_sha256"] == sha256_file(corpus / "manifest.csv")
    (moved,) = (out.parent / "test.superseded").glob("*-*")
    assert json.loads((moved / "run.json").read_text())["identity_sha256"] == old["identity_sha256"]
