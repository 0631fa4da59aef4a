"""A run directory holds one run, bound to its corpus, labels, recipe and code (``run.json``).

Same identity: resume or nothing to do. Another identity: refused with what differs (the default, the bare CLI) or a
fresh run (``on_change="fresh"``, the pipelines). Raising ``max_steps`` extends the run with the decay re-planned.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml

from mert.data.ingest import IngestParams, ingest
from mert.data.shards import Corpus
from mert.tracking import read_jsonl
from mert.train import checkpoint as ckpt
from mert.train import identity as idn
from mert.train import pretrain
from mert.train.api import RunIdentityError
from mert.train.distributed import DistInfo
from mert.train.labels import HashLabels
from mert.train.optim import lr_factor
from mert.train.params import PretrainParams
from mert.train.trainer import Trainer
from mert.utils.io import sha256_file
from tests.conftest import sine
from tests.train.conftest import tiny_profile
from tests.train.helpers import REPO, env, pretrain_cmd, write_params

LABELS = "hash:8:1024"


def disk_params(**profile) -> PretrainParams:
    return PretrainParams(profile="test", profiles={"test": tiny_profile(**profile)}, tracker="disk")


@pytest.fixture
def growing(demo_dir, corpus_dir, tmp_path):
    """A private copy of the session corpus (and of its source files) that a test can add clips to."""
    raw, corpus = tmp_path / "raw", tmp_path / "corpus"
    shutil.copytree(demo_dir / "raw", raw)
    shutil.copytree(corpus_dir, corpus)

    def add_clip(name: str = "added.wav", freq: float = 330.0) -> None:
        sf.write(raw / name, sine(4.0, freq=freq), 24000)
        summary = ingest(raw, corpus, IngestParams(workers=1), progress=False)
        assert summary.ingested == 1, summary

    return corpus, add_clip


def test_same_identity_is_a_no_op_and_a_changed_corpus_is_refused_or_retrained(growing, tmp_path):
    corpus, add_clip = growing
    out, params = tmp_path / "run", disk_params(max_steps=2)
    first = pretrain(corpus, LABELS, out, params)
    record = json.loads((out / "run.json").read_text())
    old_sha = sha256_file(corpus / "manifest.csv")
    assert record["identity"]["corpus"] == {"manifest_sha256": old_sha, "clips": len(Corpus(corpus).clips)}
    assert (out / "corpus-clips.txt").read_text().split() == sorted(c.id for c in Corpus(corpus).clips)
    assert record["schedule"] == [{"from_step": 0, "max_steps": 2}]
    lines = len(read_jsonl(out / "metrics.jsonl"))

    assert pretrain(corpus, LABELS, out, params) == first  # same run, finished: nothing to do
    assert len(read_jsonl(out / "metrics.jsonl")) == lines

    add_clip()
    with pytest.raises(RunIdentityError) as err:
        pretrain(corpus, LABELS, out, params)
    msg = str(err.value)
    assert f"corpus changed: 1 clip added, 0 removed; this run was trained on manifest sha256 {old_sha[:12]}" in msg
    assert "--on-change fresh" in msg and str(corpus) in msg
    assert (out / "result.json").exists() and not (tmp_path / "run.superseded").exists()  # nothing was touched

    fresh = pretrain(corpus, LABELS, out, params, on_change="fresh")
    assert fresh["step"] == 2
    (moved,) = (tmp_path / "run.superseded").glob(f"{record['identity_sha256'][:12]}-*")
    assert json.loads((moved / "run.json").read_text()) == record  # the old run, whole, beside the new one
    new = json.loads((out / "run.json").read_text())
    new_sha = sha256_file(corpus / "manifest.csv")
    assert new["identity"]["corpus"] == {"manifest_sha256": new_sha, "clips": len(Corpus(corpus).clips)}
    tags = json.loads((out / "tags.json").read_text())  # lineage of the new run: the new corpus
    assert tags["corpus_manifest_sha256"] == new_sha and tags["run_identity"] == new["identity_sha256"]
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2]  # trained from step 0 again
    assert read_jsonl(out / "metrics.jsonl")[0]["step"] <= 1


def test_bare_cli_refuses_a_changed_corpus_with_what_differs(growing, tmp_path):
    corpus, add_clip = growing
    prof = tiny_profile(max_steps=1)
    params = write_params(tmp_path / "params.yaml", prof)
    pretrain(corpus, LABELS, tmp_path / "run", PretrainParams(profile="test", profiles={"test": prof}, tracker="disk"))
    old_sha = sha256_file(corpus / "manifest.csv")
    add_clip()
    res = subprocess.run(pretrain_cmd(corpus, tmp_path / "run", params), env=env(), cwd=REPO, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 1, res.stderr[-3000:]
    assert f"corpus changed: 1 clip added, 0 removed; this run was trained on manifest sha256 {old_sha[:12]}" in (
        res.stderr
    )
    assert "What to do" in res.stderr and "already finished" not in res.stderr + res.stdout


def test_other_identity_changes_are_named(corpus_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    pretrain(corpus_dir, LABELS, out, disk_params(max_steps=2))
    with pytest.raises(RunIdentityError, match=r"recipe changed: lr 0.002 -> 0.001"):
        pretrain(corpus_dir, LABELS, out, disk_params(max_steps=2, lr=1e-3))
    with pytest.raises(RunIdentityError, match=r"labels changed: this run was trained on teacher hash .* 8 x 1024\), "
                       r"the labels now are hash .* 4 x 512\)"):  # fmt: skip
        pretrain(corpus_dir, "hash:4:512", out, disk_params(max_steps=2))
    with pytest.raises(RunIdentityError, match=r"max_steps 1 is below the step this run has reached \(2\)"):
        pretrain(corpus_dir, LABELS, out, disk_params(max_steps=1))
    pretrain(corpus_dir, LABELS, out, disk_params(max_steps=2, save_interval=1, log_interval=2))  # operational: same

    code = idn.code_identity()
    changed = {"files": {**code["files"], "mert/train/trainer.py": "0" * 64}}
    monkeypatch.setattr(idn, "code_identity", lambda root=None: {**changed, "sha256": "1" * 64})
    with pytest.raises(RunIdentityError, match=r"(?s)code changed: mert/train/trainer.py differs.*--allow-code-change"):
        pretrain(corpus_dir, LABELS, out, disk_params(max_steps=3))
    res = pretrain(corpus_dir, LABELS, out, disk_params(max_steps=3), allow_code_change=True)
    assert res["step"] == 3
    rec = json.loads((out / "run.json").read_text())
    assert rec["identity"]["code"]["sha256"] == "1" * 64
    (change,) = rec["code_changes"]
    assert change["from_step"] == 2 and change["previous_code_sha256"] == code["sha256"]
    assert change["code_sha256"] == "1" * 64 and change["git_commit"]


def test_a_run_without_a_record_is_never_taken_for_this_one(corpus_dir, tmp_path):
    out = tmp_path / "run"
    pretrain(corpus_dir, LABELS, out, disk_params(max_steps=1))
    (out / "run.json").unlink()  # as written before runs recorded their identity
    with pytest.raises(RunIdentityError, match="recorded no identity"):
        pretrain(corpus_dir, LABELS, out, disk_params(max_steps=1))
    assert pretrain(corpus_dir, LABELS, out, disk_params(max_steps=1), on_change="fresh")["step"] == 1
    assert len(list((tmp_path / "run.superseded").glob("unrecorded-*"))) == 1


def test_extending_3_to_5_steps_follows_the_replanned_schedule(corpus_dir, tmp_path, caplog):
    """The documented behaviour (mert.train.optim): past the old plan, the LR is that of a run planned for the new
    max_steps, from the step the run resumes at. Oracle: one uninterrupted 5-step run with that piecewise schedule
    ends with the same weights, bit for bit."""
    prof3, prof5 = tiny_profile(max_steps=3, warmup_steps=1), tiny_profile(max_steps=5, warmup_steps=1)
    out = tmp_path / "run"
    pretrain(corpus_dir, LABELS, out, disk_params(max_steps=3, warmup_steps=1))
    with caplog.at_level("INFO"):
        res = pretrain(corpus_dir, LABELS, out, disk_params(max_steps=3, warmup_steps=1), max_steps=5)
    assert res["step"] == 5
    assert "max_steps 3 -> 5 at step 3: LR schedule re-planned" in caplog.text
    rec = json.loads((out / "run.json").read_text())
    assert rec["schedule"] == [{"from_step": 0, "max_steps": 3}, {"from_step": 3, "max_steps": 5}]
    lr = {r["step"]: r["optim/lr"] for r in read_jsonl(out / "metrics.jsonl") if "optim/lr" in r}
    # optim/lr logged at step s is the LR of the next update (index s).
    assert [lr[s] for s in (1, 2, 3)] == pytest.approx([prof3.lr * lr_factor(s, prof3) for s in (1, 2)] + [0.0])
    assert [lr[s] for s in (4, 5)] == pytest.approx([prof5.lr * lr_factor(s, prof5) for s in (4, 5)])
    assert lr_factor(3, prof5) > 0  # the update at index 3 ran at the re-planned LR, not at the old end (0)

    ref = Trainer(prof5, Corpus(corpus_dir), HashLabels(8, 1024), tmp_path / "ref", DistInfo()).setup()
    ref.scheduler = torch.optim.lr_scheduler.LambdaLR(
        ref.optimizer, lambda s: lr_factor(s, prof3) if s < 3 else lr_factor(s, prof5)
    )
    ref.fit()
    got = ckpt.load_checkpoint(out / "checkpoints/step-00000005/checkpoint.pt")["model"]
    want = ref.raw_model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_dvc_pretrain_stage_tracks_the_identity_code_paths():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["pretrain"]
    assert set(idn.CODE_PATHS) <= set(stage["deps"]) and "--on-change fresh" in stage["cmd"]
    assert all((REPO / p).exists() for p in idn.CODE_PATHS)


def test_run_record_round_trip_and_tags(tmp_path):
    ident = {"corpus": {"manifest_sha256": "a" * 64, "clips": 3},
             "labels": {"name": "rvq-random-projection", "hash": "b" * 64, "n_codebooks": 8, "codebook_size": 1024},
             "recipe": {}, "encoder": {}, "objective": {}, "code": {"sha256": "c" * 64, "files": {}},
             "init_from": None}  # fmt: skip
    rec = idn.new_record(ident, 300, {"git_commit": "abc", "profile": "mert-tiny"})
    assert idn.replan(rec, 300, 320) and not idn.replan(rec, 300, 320)
    assert idn.replan(rec, 310, 400) and rec["schedule"][-1] == {"from_step": 310, "max_steps": 400}
    idn.write_record(tmp_path, rec, ["c2", "c1"])
    assert idn.read_record(tmp_path) == rec and idn.read_clips(tmp_path) == ["c1", "c2"]
    tags = idn.lineage_tags(rec)
    assert tags["corpus_manifest_sha256"] == "a" * 64 and tags["teacher"] == "rvq-random-projection"
    assert tags["schedule"] == "from step 0: max_steps 300, from step 300: max_steps 320, from step 310: max_steps 400"
    assert "parent_model" not in tags


def test_recipe_leaves_out_operational_fields():
    a = tiny_profile()
    b = tiny_profile(save_interval=7, keep_last=9, log_interval=3, max_steps=99, loader_prefetch=1, loader_workers=3)
    assert idn.recipe(a) == idn.recipe(b) == idn.recipe(dataclasses.replace(a, compile=True))
    assert idn.recipe(a) != idn.recipe(dataclasses.replace(a, seed=2))
    assert set(dataclasses.asdict(a)) - set(idn.recipe(a)) == set(idn.OPERATIONAL_FIELDS) | {"max_steps", "init_from"}


def test_identity_is_stable_across_json(corpus_dir):
    from mert.train.trainer import build_configs

    labels, prof = HashLabels(8, 1024), tiny_profile()
    cur = idn.current_identity(prof, Corpus(corpus_dir), labels, *build_configs(prof, labels))
    rec = json.loads(json.dumps(idn.new_record(cur, 3, {})))
    assert idn.differences(rec, cur, None, []) == [] and Path(corpus_dir).exists()
