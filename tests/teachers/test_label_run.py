"""The labelling driver and the label store, with a cheap deterministic teacher."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mert.data import shards as S
from mert.params import ParamsError, load_section
from mert.teachers.base import TeacherError, student_frames
from mert.teachers.label_run import label_array, label_corpus
from mert.teachers.labels import PACKED, PER_CLIP, LabelError, LabelStore
from mert.utils.io import atomic_save_npy, read_csv
from tests.teachers.conftest import EnergyTeacher, make_corpus

SECONDS = [1.0, 2.5, 0.6, 1.7, 3.2, 1.1]


def whole(teacher, corpus, clip):
    x = torch.from_numpy(corpus.audio(clip))[None]
    return teacher.encode(x, torch.tensor([clip.length]))[0, :, : student_frames(clip.length)].numpy()


@pytest.fixture
def corpus_dir(tmp_path):
    make_corpus(tmp_path / "corpus", SECONDS)
    return tmp_path / "corpus"


def run(corpus_dir, labels, teacher, **kw):
    kw.setdefault("batch_size", 2)
    return label_corpus(corpus_dir, labels, teacher, device="cpu", progress=False, **kw)


def test_labels_match_whole_clip_and_second_run_computes_nothing(corpus_dir, tmp_path):
    t = EnergyTeacher()
    s = run(corpus_dir, tmp_path / "labels", t)
    assert (s.clips, s.computed, s.cached, s.rejected) == (6, 6, 0, 0)
    assert t.calls == 3  # 6 single-window clips in batches of 2
    corpus = S.Corpus(corpus_dir)
    store = LabelStore.open(tmp_path / "labels", "energy")
    assert store.identity["name"] == "energy-test" and store.key == t.key
    for clip in corpus:
        codes = store.load(clip, sample_rate=24_000)
        assert codes.dtype == np.uint16 and codes.shape == (2, student_frames(clip.length))
        np.testing.assert_array_equal(codes, whole(t, corpus, clip))
    t2 = EnergyTeacher()
    s2 = run(corpus_dir, tmp_path / "labels", t2)
    assert t2.calls == 0 and (s2.computed, s2.cached) == (0, 6)


def test_crop_labels_are_the_crops_own_frames(corpus_dir, tmp_path):
    t = EnergyTeacher()
    run(corpus_dir, tmp_path / "labels", t)
    corpus = S.Corpus(corpus_dir)
    clip = max(corpus, key=lambda c: c.length)
    store = LabelStore.open(tmp_path / "labels")
    for m, n in [(0, 72_000), (7, 24_000), (13, 12_345)]:
        crop = store.crop(clip, 320 * m, n)
        assert crop.shape == (2, student_frames(n))
        x = torch.from_numpy(corpus.audio(clip, 320 * m, n))[None]
        np.testing.assert_array_equal(crop, t.encode(x, torch.tensor([n]))[0].numpy())  # energy codes are local


def test_long_clips_are_chunked_and_reassembled_exactly(corpus_dir, tmp_path):
    t = EnergyTeacher(chunk_frames=30)  # a local teacher: windowing must not change a single code
    s = run(corpus_dir, tmp_path / "labels", t, batch_size=3)
    corpus = S.Corpus(corpus_dir)
    assert s.windows == sum(-(-student_frames(c.length) // 30) for c in corpus) > 6
    store = LabelStore.open(tmp_path / "labels")
    for clip in corpus:
        np.testing.assert_array_equal(store.load(clip), whole(t, corpus, clip))
        np.testing.assert_array_equal(label_array(t, corpus.audio(clip), 4), whole(t, corpus, clip))


@pytest.mark.parametrize("layout", [PACKED, PER_CLIP])
def test_resume_after_kill_computes_only_the_missing_clips(corpus_dir, tmp_path, layout):
    """One shard per group: the first shard (2 clips) is committed before the kill, then the run resumes."""
    if layout == PER_CLIP:
        LabelStore.create(tmp_path / "labels", EnergyTeacher().key, EnergyTeacher().identity(), layout=PER_CLIP)
    with pytest.raises(KeyboardInterrupt):
        run(corpus_dir, tmp_path / "labels", EnergyTeacher(fail_after=2), batch_size=1, group_seconds=1e-6)
    corpus = S.Corpus(corpus_dir)
    store = LabelStore.open(tmp_path / "labels")
    assert store.layout == layout
    assert sum(store.has(c) for c in corpus) == 2
    assert not list(store.root.rglob(".tmp-*"))
    t = EnergyTeacher()
    s = run(corpus_dir, tmp_path / "labels", t, batch_size=1)
    assert (s.computed, s.cached, t.calls) == (4, 2, 4)
    assert all(store.has(c) for c in corpus)


def test_corrupt_shard_and_short_clip_are_reported_and_skipped(tmp_path):
    clips = make_corpus(tmp_path / "c", [1.0, 1.2, 0.01, 1.5, 0.9], per_shard=2)
    (tmp_path / "c" / S.SHARD_DIR / clips[3].shard).write_bytes(b"not a npy file")  # clips 2 and 3
    bad = np.full(clips[1].length, np.nan, np.float32)
    shard0 = np.load(tmp_path / "c" / S.SHARD_DIR / clips[0].shard)
    shard0[clips[1].offset :] = bad
    atomic_save_npy(tmp_path / "c" / S.SHARD_DIR / clips[0].shard, shard0)
    s = run(tmp_path / "c", tmp_path / "labels", EnergyTeacher())
    assert (s.clips, s.computed, s.rejected) == (5, 2, 3)
    rows = {r["id"]: r["reason"] for r in read_csv(s.rejects_csv)}
    assert rows.keys() == {clips[i].id for i in (1, 2, 3)}
    assert rows[clips[2].id].startswith("too short")
    assert "non-finite" in rows[clips[1].id] and "unreadable shard" in rows[clips[3].id]
    store = LabelStore.open(tmp_path / "labels")
    for i in (0, 4):
        assert store.load(clips[i]).shape[1] == student_frames(clips[i].length)
    with pytest.raises(LabelError, match="no energy-test-"):
        store.load(clips[3])


def test_mismatched_labels_raise_on_load(corpus_dir, tmp_path):
    """The per-clip layout (packs: tests/teachers/test_label_packs.py)."""
    LabelStore.create(tmp_path / "labels", EnergyTeacher().key, EnergyTeacher().identity(), layout=PER_CLIP)
    run(corpus_dir, tmp_path / "labels", EnergyTeacher())
    corpus = S.Corpus(corpus_dir)
    store = LabelStore.open(tmp_path / "labels")
    a, b = corpus.clips[:2]
    changed = S.Clip(**{**a.to_row(), "length": a.length - 320})  # same file, re-ingested differently
    with pytest.raises(LabelError, match="no energy-test-.* labels for clip"):
        store.load(changed)
    stem = store._stem(a)
    rec = json.loads(stem.with_suffix(".json").read_text())
    stem.with_suffix(".json").write_text(json.dumps({**rec, "sha256": b.sha256}))
    with pytest.raises(LabelError, match="do not match clip"):
        store.load(a)
    stem.with_suffix(".json").write_text(json.dumps(rec))
    np.save(stem.with_suffix(".npy"), np.zeros((2, 5), np.uint16))  # wrong frame count
    with pytest.raises(LabelError, match="expected uint16"):
        store.load(a)
    stem.with_suffix(".npy").write_bytes(b"garbage")
    with pytest.raises(LabelError, match="unreadable"):
        store.load(a)


def test_shards_by_range_cover_every_clip_exactly_once(corpus_dir, tmp_path):
    calls, computed = 0, 0
    for i in range(4):
        t = EnergyTeacher()
        s = run(corpus_dir, tmp_path / "labels", t, shard_index=i, num_shards=4, batch_size=1)
        calls, computed = calls + t.calls, computed + s.computed
        assert s.rejects_csv.endswith(f"rows-{s.rows[0]:08d}-{s.rows[1]:08d}.csv")
    assert calls == computed == len(SECONDS)
    store = LabelStore.open(tmp_path / "labels")
    assert all(store.has(c) for c in S.Corpus(corpus_dir))
    t = EnergyTeacher()
    assert run(corpus_dir, tmp_path / "labels", t).cached == 6 and t.calls == 0


def test_store_refuses_another_teacher_in_its_directory(corpus_dir, tmp_path):
    t = EnergyTeacher()
    run(corpus_dir, tmp_path / "labels", t)
    ident = {**t.identity(), "hash": "f" * 64}
    with pytest.raises(LabelError, match="holds teacher"):
        LabelStore.create(tmp_path / "labels", t.key, ident)


def test_codes_outside_the_codebook_are_an_error(corpus_dir, tmp_path):
    t = EnergyTeacher()
    t.codebook_size = 2  # the energy codes go up to 63
    with pytest.raises(TeacherError, match="outside"):
        run(corpus_dir, tmp_path / "labels", t)


def test_label_params_section(tmp_path):
    p = load_section("label", Path(__file__).parents[2] / "params.yaml")
    assert p.teacher == "rvq" and p.rvq.bandwidth == 6.0 and p.kmeans.features == ["mfcc"]
    (tmp_path / "p.yaml").write_text("label:\n  rvq:\n    weigths: random\n")
    with pytest.raises(ParamsError, match="weigths"):
        load_section("label", tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text("label:\n  kmeans:\n    features: [mfcc, chroma]\n    n_clusters: [10]\n")
    with pytest.raises(ParamsError, match="one value"):
        load_section("label", tmp_path / "p.yaml")


def label_files(labels_dir: Path) -> dict[str, bytes]:
    """Every label array and record of a labels directory (packs, or per-clip files), by path relative to it; the
    record index (``packs/index/``, a cache holding file stats) is not compared."""
    found = sorted([*(p for p in labels_dir.rglob("packs/*") if p.is_file()), *labels_dir.rglob("clips/*/*")])
    return {str(p.relative_to(labels_dir)): p.read_bytes() for p in found}


def test_two_ranges_label_exactly_like_one_run(tmp_path, rvq_teacher):
    """Shard blocks 0 and 1 of 2 (other batches, other padding) give the labels of one run over the corpus, byte
    for byte, with the real teacher (seeded random-projection EnCodec)."""
    make_corpus(tmp_path / "corpus", [1.0, 2.5, 0.6, 1.7, 3.2, 1.1, 0.9], music=True)
    whole = run(tmp_path / "corpus", tmp_path / "one", rvq_teacher, batch_size=3)
    parts = [run(tmp_path / "corpus", tmp_path / "two", rvq_teacher, batch_size=3, shard_index=i, num_shards=2)
             for i in range(2)]  # fmt: skip
    assert whole.computed == sum(p.computed for p in parts) == 7
    assert label_files(tmp_path / "two") == label_files(tmp_path / "one") and len(label_files(tmp_path / "one")) == 8
    assert LabelStore.open(tmp_path / "two").read_usage() == LabelStore.open(tmp_path / "one").read_usage()


@pytest.mark.slow  # ~20 s on 2 loaded cores: 4 processes each import torch and build the EnCodec teacher
def test_two_ranks_write_exactly_the_labels_of_one(tmp_path):
    """The multi-process / multi-node path: ``mert label`` under ``RANK``/``WORLD_SIZE`` (what torchrun sets; a
    node per manifest range works the same) in two concurrent processes, then one plain ``mert label`` that
    computes nothing and writes the store's usage over the whole corpus: the store is byte for byte the one a
    single process writes (the real teacher: seeded random-projection EnCodec; batches differ between the two
    layouts, labels must not)."""
    import os
    import subprocess
    import sys

    make_corpus(tmp_path / "corpus", [1.0, 2.5, 0.6, 1.7, 3.2, 1.1, 0.9], music=True)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}

    def label(out: Path, **extra) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "mert.cli", "label", str(tmp_path / "corpus"), str(out), "--teacher", "rvq",
               "--weights", "random", "--device", "cpu", "--batch-size", "3", "--no-progress", "--json"]  # fmt: skip
        return subprocess.Popen(cmd, env={**env, **extra}, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def done(proc: subprocess.Popen) -> dict:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        return json.loads(out)

    ranks = [label(tmp_path / "two", RANK=str(r), WORLD_SIZE="2") for r in range(2)]
    one = done(label(tmp_path / "one"))
    by_rank = [done(p) for p in ranks]
    assert [s["rows"] for s in by_rank] == [[0, 4], [4, 7]] and sum(s["computed"] for s in by_rank) == 7  # 2 + 2 shards
    final = done(label(tmp_path / "two"))  # after the ranks: nothing to compute, usage over every clip
    assert (one["computed"], final["computed"], final["cached"]) == (7, 0, 7)
    assert label_files(tmp_path / "two") == label_files(tmp_path / "one") and len(label_files(tmp_path / "one")) == 8
    store_one, store_two = LabelStore.open(tmp_path / "one"), LabelStore.open(tmp_path / "two")
    assert store_two.read_usage() == store_one.read_usage() and store_one.read_usage()["clips"] == 7
