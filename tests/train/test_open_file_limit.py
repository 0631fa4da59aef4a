"""A corpus of 2,000 shards (and a packed label store of 2,000 packs) opens, trains and resumes under ``ulimit -n
256``: no file descriptor or memory map is kept per shard or per pack."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from mert.data import shards as S
from mert.data.synth import write_corpus_arrays
from mert.teachers.base import student_frames
from mert.teachers.labels import LabelStore
from tests.train.conftest import tiny_profile
from tests.train.helpers import REPO, env, write_params

SHARDS = 2000
LIMIT = 256


def _corpus(root: Path) -> None:
    rng = np.random.default_rng(0)
    clips = ((f"{i}.wav", (0.1 * rng.standard_normal(24000)).astype(np.float32), None) for i in range(SHARDS))
    write_corpus_arrays(root, clips, 24000, per_shard=1, shard_dtype="int16")  # one clip per shard: 2,000 shards


def _labels(corpus: S.Corpus, labels_dir: Path) -> None:
    ident = {"name": "rand", "config": {"n_codebooks": 8, "codebook_size": 1024}, "hash": "f" * 64}
    store = LabelStore.create(labels_dir, "rand-" + "f" * 12, ident)
    rng = np.random.default_rng(1)
    for clip in corpus.clips:
        codes = rng.integers(0, 1024, (8, student_frames(clip.length)), dtype=np.uint16)
        store.write_shard(clip.shard, [clip], [codes], [""], corpus.sample_rate)
    store.write_usage(corpus.clips, 1024)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=600, preexec_fn=_limited)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


READ_ALL = """
import resource, sys
from mert.data.shards import Corpus
from mert.train.labels import open_labels
assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == {limit}
corpus = Corpus(sys.argv[1])  # verifies all shards from their headers
labels = open_labels(sys.argv[2], corpus)  # the before-training checks
total = 0
for clip in corpus.clips:  # every shard and every pack once: far more than the fd limit
    total += corpus.audio(clip, 0, 9600).shape[0] + labels.crop(clip, 0, 9600).shape[1]
print(len(corpus.shard_names), total)
"""


def test_2000_shards_open_train_two_steps_and_resume_under_ulimit_256(tmp_path):
    root, labels_dir = tmp_path / "corpus", tmp_path / "labels"
    _corpus(root)
    corpus = S.Corpus(root)
    assert len(corpus.shard_names) == SHARDS
    _labels(corpus, labels_dir)

    res = _run([sys.executable, "-c", READ_ALL.format(limit=LIMIT), str(root), str(labels_dir)])
    assert res.stdout.split() == [str(SHARDS), str(SHARDS * (9600 + student_frames(9600)))]

    params = write_params(tmp_path / "params.yaml", tiny_profile(max_steps=2, save_interval=2, loader_workers=0))
    out = tmp_path / "run"
    base = [sys.executable, "-m", "mert.cli", "pretrain", str(root), str(labels_dir), str(out), "--params", str(params),
            "--device", "cpu"]  # fmt: skip
    _run(base)
    assert (out / "checkpoints/step-00000002/checkpoint.pt").exists()
    res = _run([*base, "--max-steps", "3"])  # the same run, extended: resumes at step 2
    assert f"resumed from {out}/checkpoints/step-00000002" in res.stderr
    assert (out / "checkpoints/step-00000003/checkpoint.pt").exists()
