"""The record index (``packs/index/records.npz``): used when current, a cache the record files always overrule."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from mert.data import shards as S
from mert.teachers import packs as P
from mert.teachers.labels import LabelStore
from mert.train.labels import open_labels
from tests.teachers.conftest import EnergyTeacher, make_corpus
from tests.teachers.test_label_packs import write_random_packs


@pytest.fixture
def corpus(tmp_path):
    make_corpus(tmp_path / "corpus", [1.0, 2.5, 0.6, 1.7, 3.2, 1.1])  # 3 shards of 2 clips
    return S.Corpus(tmp_path / "corpus")


@pytest.fixture
def reads(monkeypatch):
    """The record files read (by name), from the moment the fixture is used."""
    names: list[str] = []
    read = P.read_record
    monkeypatch.setattr(P, "read_record", lambda path: names.append(path.name) or read(path))
    return names


def age(store: LabelStore, seconds: float = 10.0) -> None:
    """Backdate every record by ``seconds``: older than ``RACY_NS``, so an index may trust its stat."""
    t = time.time_ns() - int(seconds * 1e9)
    for f in (store.root / P.PACK_DIR).glob("*.json"):
        os.utime(f, ns=(t, t))


def writer(root) -> LabelStore:
    """The store as a labelling run holds it (``LabelStore.create``): it rewrites a stale index."""
    store = LabelStore(root)
    store.index_writer = True
    return store


def indexed_store(tmp_path, corpus: S.Corpus) -> LabelStore:
    """A packed store of random codes whose index is current (built by ``write_usage``, as ``mert label`` does)."""
    store = LabelStore.create(tmp_path / "labels", "x", EnergyTeacher().identity())
    write_random_packs(store, corpus)
    age(store)
    store.write_usage(corpus, 64)
    assert P.read_index(store.root) is not None
    return store


def assert_same_table(a: P.RecordTable, b: P.RecordTable) -> None:
    for k, v in a.columns().items():
        if k != "seen_ns":
            np.testing.assert_array_equal(v, getattr(b, k), err_msg=k)


def test_a_current_index_is_used_and_equals_the_records(tmp_path, corpus, reads):
    store = indexed_store(tmp_path, corpus)
    reads.clear()
    fresh = writer(store.root)
    assert fresh.match(corpus).state.tolist() == [1] * 6 and reads == []  # every record from the index
    assert open_labels(store.root, corpus).usage["clips"] == 6 and reads == []
    whole = P.refresh(store.root, P.empty_table(store.root))[0]  # every record read
    assert_same_table(fresh.pack_table(), whole) and len(whole) == 3 and len(reads) == 3
    assert [fresh.has(c) for c in corpus] == [True] * 6 and len(reads) == 3  # per clip: views of the table
    clip = corpus.clips[3]
    np.testing.assert_array_equal(fresh.load(clip), writer(store.root).load(clip))


def test_a_record_rewritten_after_the_index_is_read_again(tmp_path, corpus, reads):
    store = indexed_store(tmp_path, corpus)
    clips = corpus.clips[2:4]
    store.write_shard(clips[0].shard, clips, [None, None], ["unreadable: x", "unreadable: y"], corpus.sample_rate)
    path = P.pack_paths(store.root, "shard-00002.npy")[1]
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "teacher": "f" * 64}))  # same size, other content: the stat still differs
    reads.clear()
    fresh = writer(store.root)
    m = fresh.match(corpus)
    assert m.state.tolist() == [1, 1, -1, -1, 1, 1] and sorted(reads) == ["shard-00001.json", "shard-00002.json"]
    assert [m.reason(i) for i in (2, 3)] == ["unreadable: x", "unreadable: y"]  # read lazily from the record
    assert fresh.pack_table().teacher[2] == b"f" * 64
    reads.clear()
    assert writer(store.root).match(corpus).state.tolist() == [1, 1, -1, -1, 1, 1]
    assert sorted(reads) == ["shard-00001.json", "shard-00002.json"]  # index rewritten, but still racily new
    age(store)
    assert writer(store.root).match(corpus).state[2] == -1
    reads.clear()
    assert writer(store.root).match(corpus).state[2] == -1 and reads == []  # trusted once old enough


def test_a_new_pack_is_seen_and_a_deleted_record_disappears(tmp_path, corpus, reads):
    store = indexed_store(tmp_path, corpus)
    npy, rec = P.pack_paths(store.root, "shard-00001.npy")
    rec.unlink()
    reads.clear()
    assert writer(store.root).match(corpus).state.tolist() == [1, 1, 0, 0, 1, 1] and reads == []
    assert len(P.read_index(store.root)) == 2  # rewritten without it
    write_random_packs(store, S.Corpus(corpus.root))  # every shard again: shard-00001 is new to the index
    age(store)
    reads.clear()
    fresh = writer(store.root)
    assert fresh.match(corpus).state.tolist() == [1] * 6 and len(reads) == 3  # each record rewritten: re-read
    assert fresh.records()[1].shard == "shard-00001.npy" and len(P.read_index(store.root)) == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "version", "inconsistent"])
def test_a_corrupt_or_foreign_index_is_ignored_and_rebuilt(tmp_path, corpus, reads, damage):
    store = indexed_store(tmp_path, corpus)
    path = store.root / P.INDEX_PATH
    cols = dict(np.load(path))
    if damage == "garbage":
        path.write_bytes(b"not an index")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        meta = {"version": P.INDEX_VERSION + (damage == "version")}
        cols["start"] = cols["start"][::-1] if damage == "inconsistent" else cols["start"]
        np.savez(path, **{**cols, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    assert P.read_index(store.root) is None
    reads.clear()
    assert writer(store.root).match(corpus).state.tolist() == [1] * 6 and len(reads) == 3
    assert_same_table(P.read_index(store.root), writer(store.root).pack_table())


def test_a_read_only_store_opens_without_its_index(tmp_path, corpus, reads, monkeypatch):
    store = indexed_store(tmp_path, corpus)
    (store.root / P.INDEX_PATH).unlink()

    def read_only(*a, **k):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(P, "atomic_write", read_only)  # root may write through chmod: fail the write itself
    (store.root / P.PACK_DIR).chmod(0o555)
    try:
        for _ in range(2):
            reads.clear()
            assert open_labels(store.root, corpus).usage["clips"] == 6 and len(reads) == 3
        assert not (store.root / P.INDEX_PATH).exists()
    finally:
        (store.root / P.PACK_DIR).chmod(0o755)


def test_match_without_index_equals_the_per_record_match(tmp_path, corpus):
    """Packs of shards the corpus lacks, and clips no pack holds: the vectorised match agrees with per clip."""
    store = LabelStore.create(tmp_path / "labels", "x", EnergyTeacher().identity())
    write_random_packs(store, corpus)
    make_corpus(tmp_path / "other", [0.7, 1.2, 0.4], per_shard=1, seed=3)
    other = S.Corpus(tmp_path / "other")
    both = list(corpus.clips)[::-1] + list(other.clips)
    m = store.match(both)
    assert m.state.tolist() == [1 if i < 6 and store.has(c) else 0 for i, c in enumerate(both)] == [1] * 6 + [0] * 3
    for i, c in enumerate(both[:6]):
        rec = store.pack_table().record(int(m.pack[i]))
        assert rec.shard == c.shard and int(rec.offset[int(m.entry[i])]) == c.offset


def test_a_reader_never_writes_the_index(tmp_path, corpus, reads):
    """``mert pretrain`` reads a store that may be a DVC output: a stale index is worked around, never rewritten."""
    store = indexed_store(tmp_path, corpus)
    path = store.root / P.INDEX_PATH
    before = path.read_bytes()
    P.pack_paths(store.root, "shard-00001.npy")[1].unlink()  # the index is now stale
    reads.clear()
    assert LabelStore(store.root).match(corpus).state.tolist() == [1, 1, 0, 0, 1, 1] and reads == []
    assert path.read_bytes() == before
