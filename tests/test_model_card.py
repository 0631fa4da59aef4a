"""The model card in the registry: written at registration, updated when probe scores arrive, instructions that run."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mert.model_card import card_markdown, probe_rows

TAGS = {
    "profile": "mert-tiny",
    "teacher": "rvq",
    "teacher_hash": "f00dfeedbeef" * 4,
    "corpus_path": "data/corpus",
    "corpus_manifest_sha256": "ab" * 32,
    "corpus_dvc_md5": "0123456789abcdef.dir",
    "step": "300",
    "run_id": "r1",
    "git_commit": "deadbeef",
}


def test_card_before_probing_has_lineage_losses_and_how_to_load():
    metrics = {"train/loss/total": 5.4321, "val/loss/total": 5.5, "train/loss/rvq_ce_3": 0.7, "train/acc/rvq_0": 0.1}
    md = card_markdown("mert-tiny", "3", TAGS, metrics)
    assert md.startswith("## mert-tiny version 3: MERT encoder, profile `mert-tiny`")
    for label, value in (("teacher", "rvq"), ("corpus manifest sha256", "ab" * 32), ("steps", "300"),
                         ("corpus DVC md5", "0123456789abcdef.dir"), ("corpus", "data/corpus")):  # fmt: skip
        assert f"| {label} | `{value}` |" in md
    assert "| `train/loss/total` | 5.432 |" in md and "| `val/loss/total` | 5.5 |" in md
    assert "rvq_ce_3" not in md and "acc/" not in md  # per-codebook parts and accuracies stay in the run
    assert "Not probed yet. `mert probe --model models:/mert-tiny/3 --task TASK --mlflow`" in md
    assert 'mlflow.pyfunc.load_model("models:/mert-tiny/3")' in md and "MERT.from_pretrained(" in md


def test_probe_rows_and_the_majority_column():
    tags = TAGS | {"probe.key.metric": "key_weighted", "probe.key.key_weighted": "0.41", "probe.key.ci_low": "0.35",
                   "probe.key.ci_high": "0.47", "probe.key.n_test": "60", "probe.key.majority_rate": "0.093",
                   "probe.key.best_layer": "2", "probe.tempo.metric": "beat_f1", "probe.tempo.beat_f1": "0.2",
                   "probe.tempo.ci_low": "0.1", "probe.tempo.ci_high": "0.3", "probe.tempo.majority_rate": "0.25",
                   "probe.old.metric": "accuracy", "probe.old.accuracy": "0.5"}  # fmt: skip
    rows = probe_rows(tags)
    assert [r["task"] for r in rows] == ["key", "old", "tempo"] and rows[0]["score"] == "0.41"
    md = card_markdown("m", "1", tags, {})
    assert "| key | key_weighted | 0.410 [0.350, 0.470] | 60 | 0.093 | 2 | yes |" in md
    assert "| tempo | beat_f1 | 0.200 [0.100, 0.300] | n/a | 0.250 | n/a | no, overlaps |" in md
    assert "| old | accuracy | 0.500 [n/a] | n/a | n/a | n/a | n/a |" in md  # a pre-evidence tag set
    assert "percentile bootstraps over the test clips" in md and "Not probed yet" not in md


def _python_blocks(md: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md, flags=re.S)


def test_registration_writes_the_card_and_probing_updates_it(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import torch

    from mert.model import MERT, MERTConfig
    from mert.probe.report import write_outputs
    from mert.probe.tracking import log_probe
    from mert.tracking import MLflowLogger, connect, log_encoder_model, register_candidate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = MERT(MERTConfig.from_name("mert-tiny")).eval()
    model.save_pretrained(tmp_path / "run" / "export")
    ml = MLflowLogger(uri, "mert-pretrain", run_name="run", system_metrics=False)
    ml.log_dict({"train/loss/total": 6.25, "train/loss/rvq_ce": 5.5, "val/loss/total": 6.5}, step=2)
    version = register_candidate(log_encoder_model(ml, tmp_path / "run" / "export"), "mert-tiny",
                                 {**TAGS, "run_id": ml.run_id, "step": 2})  # fmt: skip
    ml.close()
    client, _ = connect(uri, "mert-probe")
    md = client.get_model_version("mert-tiny", version).description
    assert "| teacher | `rvq` |" in md and "| steps | `2` |" in md and "| `train/loss/total` | 6.25 |" in md
    assert "Not probed yet" in md

    report = {"task": "key", "task_kind": "key", "metric": "key_weighted", "test_score": 0.41, "valid_score": 0.4,
              "best_layer": "1", "per_layer": {"0": 0.3, "1": 0.4}, "per_layer_test": {"0": 0.3, "1": 0.41},
              "test_metrics": {"key_weighted": 0.41}, "n_skipped": 0, "params": {}, "ci_low": 0.35, "ci_high": 0.47,
              "n_test": 60, "majority_rate": 0.093, "majority_baseline": "always C major",
              "model": {"label": "candidate", "registry_uri": "models:/mert-tiny@candidate"}}  # fmt: skip
    write_outputs(report, tmp_path / "probe" / "results.json")
    log_probe(report, tmp_path / "probe" / "results.json", uri)
    md = client.get_model_version("mert-tiny", version).description
    assert "| key | key_weighted | 0.410 [0.350, 0.470] | 60 | 0.093 | 1 | yes |" in md
    assert "| teacher | `rvq` |" in md and "Not probed yet" not in md

    # the card's loading instructions run as written, and give the encoder's hidden states
    wav = np.random.default_rng(0).standard_normal((1, 24_000)).astype(np.float32) * 0.1
    blocks = _python_blocks(md)
    assert len(blocks) == 2
    scope: dict = {"wav": wav}
    for block in blocks:
        exec(block, scope)  # noqa: S102 - our own card's snippets
    with torch.no_grad():
        want = torch.stack(model(torch.from_numpy(wav), output_hidden_states=True).hidden_states, 1).numpy()
    np.testing.assert_allclose(scope["features"], want, atol=1e-5)
    got = torch.stack(scope["out"].hidden_states, 1).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
