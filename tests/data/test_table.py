"""The corpus at scale: the columnar clip table, the bounded shard cache, stat-based re-runs, committed shards
adopted after a kill, and int16 shards."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import mert.data.ingest as ing
from mert.data import shards as S
from mert.data.ingest import IngestError, IngestParams, ingest
from mert.data.synth import write_corpus_arrays
from mert.train.data import CropSampler
from mert.train.labels import HashLabels
from mert.utils.io import sha256_json
from tests.conftest import noise

P = IngestParams(workers=1, shard_seconds=7.0)  # two 3.5-s files per shard


@pytest.fixture
def src(tmp_path: Path, write_audio) -> Path:
    for i in range(6):
        write_audio(f"src/d{i % 2}/{i}.wav", noise(3.5, 16000, seed=i), 16000)
    return tmp_path / "src"


def test_table_equals_the_manifest_and_is_rebuilt_when_the_manifest_changes(src, tmp_path):
    out = tmp_path / "c"
    ingest(src, out, P, progress=False)
    corpus = S.Corpus(out)
    assert (out / "table" / "table.json").exists()
    assert list(corpus.clips) == S.read_manifest(out)  # every field, every row, in order
    assert corpus.manifest_sha256 and corpus.total_seconds == pytest.approx(6 * 3.5, abs=1e-3)
    rows = list(csv.DictReader(open(out / S.MANIFEST)))
    with open(out / S.MANIFEST, "w", newline="") as f:  # a user (or an old version) edits the manifest
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[1:])
    corpus = S.Corpus(out)
    assert len(corpus) == 5 and [c.id for c in corpus.clips] == [r["id"] for r in rows[1:]]


def test_a_legacy_manifest_without_stat_columns_is_read_then_upgraded(src, tmp_path, monkeypatch):
    out = tmp_path / "c"
    ingest(src, out, P, progress=False)
    rows = list(csv.DictReader(open(out / S.MANIFEST)))
    legacy = [k for k in rows[0] if k not in ("size", "mtime_ns")]
    with open(out / S.MANIFEST, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=legacy, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert all(c.size == -1 for c in S.Corpus(out).clips)
    hashed = _count_hashes(monkeypatch)
    s = ingest(src, out, P, progress=False)
    assert s.unchanged == 6 and hashed["n"] == 6  # no stat to trust: hashed once, and the stat recorded
    assert all(c.size > 0 and c.mtime_ns > 0 for c in S.Corpus(out).clips)
    hashed["n"] = 0
    assert ingest(src, out, P, progress=False).unchanged == 6 and hashed["n"] == 0


def _count_hashes(monkeypatch) -> dict:
    calls = {"n": 0}
    real = ing.sha256_file

    def counting(path, *a):
        calls["n"] += 1
        return real(path, *a)

    monkeypatch.setattr(ing, "sha256_file", counting)
    return calls


def test_unchanged_rerun_hashes_nothing_and_a_touched_file_is_hashed_once(src, tmp_path, monkeypatch):
    out = tmp_path / "c"
    ingest(src, out, P, progress=False)
    before = (out / S.MANIFEST).read_bytes()
    hashed = _count_hashes(monkeypatch)
    s = ingest(src, out, P, progress=False)
    assert (s.unchanged, s.ingested, hashed["n"]) == (6, 0, 0)
    assert (out / S.MANIFEST).read_bytes() == before  # nothing changed: the manifest is not rewritten
    touched = src / "d0" / "2.wav"
    os.utime(touched, ns=(10**18, 10**18))  # same bytes, new mtime
    s = ingest(src, out, P, progress=False)
    assert (s.unchanged, s.ingested, hashed["n"]) == (6, 0, 1)
    row = next(c for c in S.Corpus(out).clips if c.source == "d0/2.wav")
    assert row.mtime_ns == 10**18  # recorded: the next run trusts the stat again
    hashed["n"] = 0
    assert ingest(src, out, P, progress=False).unchanged == 6 and hashed["n"] == 0


def test_a_changed_file_is_reingested_and_its_old_row_dropped(src, tmp_path, write_audio):
    out = tmp_path / "c"
    ingest(src, out, P, progress=False)
    old = {c.source: c.sha256 for c in S.Corpus(out).clips}
    write_audio("src/d1/3.wav", noise(4.0, 16000, seed=99), 16000)
    s = ingest(src, out, P, progress=False)
    assert (s.unchanged, s.ingested, s.removed) == (5, 1, 1)
    clips = S.Corpus(out).clips
    assert len(clips) == 6 and {c.source for c in clips} == set(old)
    assert next(c for c in clips if c.source == "d1/3.wav").sha256 != old["d1/3.wav"]


def test_shards_committed_by_a_killed_run_are_adopted_not_redone(src, tmp_path, monkeypatch):
    out = tmp_path / "c"
    monkeypatch.setattr(ing, "MANIFEST_REWRITE_RATIO", float("inf"))  # the manifest is never rewritten mid-run
    real = ing.atomic_save_npy
    calls = {"n": 0}

    def dying(path, arr):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed while writing the third shard")
        real(path, arr)

    monkeypatch.setattr(ing, "atomic_save_npy", dying)
    with pytest.raises(KeyboardInterrupt):
        ingest(src, out, P, progress=False)
    assert sorted(p.name for p in (out / "shards").glob("*.csv")) == ["shard-00000.csv", "shard-00001.csv"]
    monkeypatch.setattr(ing, "atomic_save_npy", real)
    decoded = {"n": 0}
    real_process = ing._process

    def counting(*a):
        r = real_process(*a)
        decoded["n"] += r.audio is not None
        return r

    monkeypatch.setattr(ing, "_process", counting)
    s = ingest(src, out, P, progress=False)
    assert (s.unchanged, s.ingested, decoded["n"]) == (4, 2, 2)  # the 4 files of the committed shards kept
    corpus = S.Corpus(out)
    assert len(corpus) == 6 and corpus.shard_names == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    assert not list((out / "shards").glob("*.csv"))


def test_int16_shards_read_as_the_dequantised_float32_crops(src, tmp_path):
    f32, i16 = tmp_path / "f32", tmp_path / "i16"
    ingest(src, f32, P, progress=False)
    ingest(src, i16, IngestParams(workers=1, shard_seconds=7.0, shard_dtype="int16"), progress=False)
    a, b = S.Corpus(f32), S.Corpus(i16)
    assert b.dtype == "int16" and S.read_npy_header(i16 / "shards" / b.clips[0].shard)[1] == np.int16
    size = {d: (d / "shards" / "shard-00000.npy").stat().st_size for d in (f32, i16)}
    assert size[i16] < 0.51 * size[f32]
    assert list(a.clips) == list(b.clips)
    sa, sb = (CropSampler(c, HashLabels(2, 16), 24000, 24000, 3, seed=1) for c in (a, b))
    for step in range(4):
        x, y = sa.batch(step, 0), sb.batch(step, 0)
        assert x.clip_ids == y.clip_ids and torch_equal(x.labels, y.labels)
        q = S.quantize_int16(x.wav.numpy().ravel())
        np.testing.assert_array_equal(y.wav.numpy().ravel(), q.astype(np.float32) / 32768)  # bit for bit
        assert np.abs(y.wav.numpy() - x.wav.numpy()).max() <= 2.0**-16
    with pytest.raises(IngestError, match="holds int16 shards"):
        ingest(src, i16, P, progress=False)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_quantisation_is_round_to_nearest_and_clipped():
    x = np.array([-1.0, -0.5, 0.0, 1 / 65536, 3 / 65536, 0.5, 1.0, 1.5], np.float32)
    q = S.quantize_int16(x)
    assert q.tolist() == [-32768, -16384, 0, 0, 2, 16384, 32767, 32767]  # rint: half to even


def test_the_shard_cache_is_bounded_and_the_corpus_pickles_by_path(tmp_path):
    clips = [(f"{i}.wav", noise(1.0, 24000, seed=i), None) for i in range(12)]
    write_corpus_arrays(tmp_path / "c", clips, 24000, per_shard=1)
    corpus = S.Corpus(tmp_path / "c", max_open_shards=3)
    fds = len(os.listdir("/proc/self/fd"))
    for c in corpus.clips:
        corpus.audio(c, 0, 100)
        assert len(corpus._fds) <= 3
    assert len(os.listdir("/proc/self/fd")) <= fds + 3
    blob = pickle.dumps(corpus)
    assert len(blob) < 2000  # the path, not the table or any shard
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.audio(again.clips[5]), corpus.audio(corpus.clips[5]))


def test_verification_names_the_clip_and_shard(tmp_path):
    clips = [(f"{i}.wav", noise(1.0, 24000, seed=i), None) for i in range(4)]
    write_corpus_arrays(tmp_path / "c", clips, 24000, per_shard=2)
    np.save(tmp_path / "c" / "shards" / "shard-00001.npy", np.zeros(30000, np.float32))  # truncated
    with pytest.raises(S.CorpusError, match=r"clip \w+ \(3.wav\) spans \[24000, 48000\) but shard shard-00001.npy"):
        S.Corpus(tmp_path / "c")
    np.save(tmp_path / "c" / "shards" / "shard-00001.npy", np.zeros(48000, np.float64))
    with pytest.raises(S.CorpusError, match="expected 1-D float32, got float64"):
        S.Corpus(tmp_path / "c")


def test_a_malformed_manifest_row_is_a_corpus_error_naming_the_file(tmp_path):
    clips = [(f"{i}.wav", noise(1.0, 24000, seed=i), None) for i in range(2)]
    write_corpus_arrays(tmp_path / "c", clips, 24000, per_shard=2)
    rows = list(csv.DictReader(open(tmp_path / "c" / S.MANIFEST)))
    rows[1]["length"] = "many"
    with open(tmp_path / "c" / S.MANIFEST, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(S.CorpusError, match="manifest.csv: malformed row"):
        S.Corpus(tmp_path / "c")


def test_fingerprint_is_the_documented_hash_and_holdout_works_on_columns(tmp_path):
    clips = [(f"{i}.wav", noise(1.0 + 0.1 * i, 24000, seed=i), None) for i in range(10)]
    write_corpus_arrays(tmp_path / "c", clips, 24000, per_shard=3)
    corpus = S.Corpus(tmp_path / "c")
    from mert.train.data import holdout_split

    train, val = holdout_split(corpus.clips, 2, 24000, seed=5)
    assert len(train) == 8 and len(val) == 2 and set(train.rows) | set(val.rows) == set(range(10))
    lists = holdout_split(list(corpus.clips), 2, 24000, seed=5)  # a plain list: the same split
    assert [c.id for c in lists[0]] == [c.id for c in train] and [c.id for c in lists[1]] == [c.id for c in val]
    smp = CropSampler(corpus, HashLabels(2, 16), 24000, 24000, 2, world_size=2, seed=7, clips=train)
    ids = [c.id for c in train]
    assert smp.fingerprint() == sha256_json([ids, 7, 24000, 2, 2])
    assert smp.stream()["clips"] == sha256_json(ids) and smp.stream()["n_clips"] == 8
    assert train.ids() == ids and corpus.clips.ids() == [c.id for c in corpus.clips]


def test_verified_shards_are_cached_by_stat_and_a_replaced_shard_is_read_again(tmp_path, monkeypatch):
    clips = [(f"{i}.wav", noise(1.0, 24000, seed=i), None) for i in range(6)]
    write_corpus_arrays(tmp_path / "c", clips, 24000, per_shard=2)
    S.Corpus(tmp_path / "c", verify=False).verify(save_cache=True)  # reads the 3 headers, writes table/shards.npz
    reads = {"n": 0}
    real = S.read_npy_header

    def counting(path):
        reads["n"] += 1
        return real(path)

    monkeypatch.setattr(S, "read_npy_header", counting)
    S.Corpus(tmp_path / "c")
    assert reads["n"] == 0  # every shard's stat matched the cache
    np.save(tmp_path / "c" / "shards" / "shard-00002.npy", np.zeros(30000, np.float32))  # truncated behind our back
    with pytest.raises(S.CorpusError, match=r"\(5.wav\) spans \[24000, 48000\) but shard shard-00002.npy has 30000"):
        S.Corpus(tmp_path / "c")
    assert reads["n"] == 1  # only the changed shard's header


def test_a_shard_truncated_after_opening_is_a_corpus_error_naming_it(tmp_path):
    clips = [(f"{i}.wav", noise(1.0, 24000, seed=i), None) for i in range(2)]
    write_corpus_arrays(tmp_path / "c", clips, 24000, per_shard=2)
    corpus = S.Corpus(tmp_path / "c")
    path = tmp_path / "c" / "shards" / "shard-00000.npy"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4 * 1000)  # the second clip loses its last 1000 samples
    np.testing.assert_array_equal(corpus.audio(corpus.clips[0]), clips[0][1])
    with pytest.raises(S.CorpusError, match=r"shard-00000.npy is truncated: read \d+ of 96000 bytes"):
        corpus.audio(corpus.clips[1])


def test_readers_never_write_into_a_corpus_and_a_copy_needs_no_rebuild(src, tmp_path, monkeypatch):
    """A corpus may be a DVC output (restored as copies: new mtimes and inodes), read-only, or shared by ranks."""
    import shutil

    out = tmp_path / "c"
    ingest(src, out, P, progress=False)
    assert (out / "table" / "shards.npz").exists()  # ingestion leaves the readers' caches current
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # every file new: the stat checks all fail
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    monkeypatch.setattr(S.ClipTable, "from_csv", lambda *a: pytest.fail("the table was rebuilt"))
    corpus = S.Corpus(copy)  # the table is valid by its manifest hash; the shards by their headers
    assert len(corpus) == 6 and corpus.audio(corpus.clips[2]).shape == (corpus.clips[2].length,)
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before  # nothing written
