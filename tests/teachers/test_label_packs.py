"""The packed label layout: one pack per audio shard, committed by its record; old per-clip stores still work."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from itertools import groupby
from pathlib import Path

import numpy as np
import pytest

from mert.data import shards as S
from mert.teachers import packs as P
from mert.teachers.base import student_frames
from mert.teachers.label_run import label_corpus, select_shards
from mert.teachers.labels import PACKED, PER_CLIP, TEACHER_FILE, USAGE_FILE, LabelError, LabelStore
from mert.train.labels import StoreLabels, check_store, open_labels
from tests.teachers.conftest import EnergyTeacher, make_corpus

SECONDS = [1.0, 2.5, 0.6, 1.7, 3.2, 1.1]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def corpus_dir(tmp_path):
    make_corpus(tmp_path / "corpus", SECONDS)  # 3 shards of 2 clips
    return tmp_path / "corpus"


def run(corpus_dir, labels, teacher=None, **kw):
    return label_corpus(corpus_dir, labels, teacher or EnergyTeacher(), batch_size=2, device="cpu", progress=False,
                        **kw)  # fmt: skip


def per_clip_store(labels: Path, legacy: bool = True) -> LabelStore:
    """An empty per-clip store; ``legacy``: its teacher.json has no ``layout`` (as written before packs)."""
    t = EnergyTeacher()
    store = LabelStore.create(labels, t.key, t.identity(), layout=PER_CLIP)
    if legacy:
        (store.root / TEACHER_FILE).write_text(json.dumps(t.identity()))
    return LabelStore(store.root)


def write_random_packs(store: LabelStore, corpus: S.Corpus, seed: int = 0) -> None:
    """Packs of random codes for every shard of ``corpus``, written with the store's packing code directly."""
    rng = np.random.default_rng(seed)
    for shard, clips in groupby(corpus.clips, key=lambda c: c.shard):
        clips = list(clips)
        codes = [rng.integers(0, 64, (store.n_codebooks, student_frames(c.length)), dtype=np.uint16) for c in clips]
        store.write_shard(shard, clips, codes, [""] * len(clips), corpus.sample_rate)


def test_packed_store_holds_exactly_the_per_clip_stores_labels(corpus_dir, tmp_path):
    per_clip_store(tmp_path / "old")
    s_old, s_new = run(corpus_dir, tmp_path / "old"), run(corpus_dir, tmp_path / "new")
    assert (s_new.computed, s_new.cached, s_new.rejected) == (s_old.computed, 0, 0) == (6, 0, 0)
    old, new = LabelStore.open(tmp_path / "old"), LabelStore.open(tmp_path / "new")
    assert (old.layout, new.layout) == (PER_CLIP, PACKED) and old.identity == new.identity  # layout is not identity
    corpus = S.Corpus(corpus_dir)
    for clip in corpus:
        np.testing.assert_array_equal(new.load(clip, sample_rate=24_000), old.load(clip))
        np.testing.assert_array_equal(new.crop(clip, 320 * 3, 12_345), old.crop(clip, 320 * 3, 12_345))
    assert sorted(p.name for p in (new.root / P.PACK_DIR).iterdir()) == ["index"] + [
        f"shard-0000{i}.{ext}" for i in range(3) for ext in ("json", "npy")
    ]
    assert [p.name for p in (new.root / P.INDEX_PATH).parent.iterdir()] == [P.INDEX_PATH.name]
    pack = np.load(new.root / P.PACK_DIR / "shard-00000.npy")
    assert pack.dtype == np.uint16 and pack.shape == (2, sum(student_frames(c.length) for c in corpus.clips[:2]))
    assert not list(new.root.glob("clips"))
    assert new.read_usage() == {**old.read_usage(), "teacher": new.key}


def test_a_pack_without_record_is_ignored_and_rewritten(corpus_dir, tmp_path):
    run(corpus_dir, tmp_path / "labels")
    store = LabelStore.open(tmp_path / "labels")
    corpus = S.Corpus(corpus_dir)
    npy, record = P.pack_paths(store.root, "shard-00001.npy")
    record.unlink()
    npy.write_bytes(b"half-written")  # what a kill between the array and its record leaves
    fresh = LabelStore(store.root)
    assert [fresh.has(c) for c in corpus] == [True, True, False, False, True, True]
    with pytest.raises(LabelError, match=f"no committed pack {record}"):
        fresh.load(corpus.clips[2])
    t = EnergyTeacher()
    s = run(corpus_dir, tmp_path / "labels", t)
    assert (s.computed, s.cached, t.calls) == (2, 4, 1)
    fresh = LabelStore(store.root)
    assert all(fresh.has(c) for c in corpus)
    assert fresh.load(corpus.clips[3]).shape[1] == student_frames(corpus.clips[3].length)


def test_corrupt_packs_and_mismatched_records_name_the_file(corpus_dir, tmp_path):
    run(corpus_dir, tmp_path / "labels")
    root = LabelStore.open(tmp_path / "labels").root
    clip = S.Corpus(corpus_dir).clips[1]
    npy, record = P.pack_paths(root, clip.shard)
    good_npy, good_rec = npy.read_bytes(), json.loads(record.read_text())

    def load(rec=None, arr=None):
        record.write_text(json.dumps(rec or good_rec))
        npy.write_bytes(good_npy) if arr is None else (np.save(npy, arr) if isinstance(arr, np.ndarray) else
                                                       npy.write_bytes(arr))  # fmt: skip
        return LabelStore(root).load(clip, sample_rate=24_000)

    with pytest.raises(LabelError, match=f"labels {npy} of clip {clip.id} are unreadable"):
        load(arr=b"garbage")
    with pytest.raises(LabelError, match=f"labels {npy} of clip {clip.id}: uint16 \\(2, 5\\), expected uint16"):
        load(arr=np.zeros((2, 5), np.uint16))
    with pytest.raises(LabelError, match=f"labels {npy} do not match clip {clip.id}: .*'teacher'"):
        load(rec={**good_rec, "teacher": "f" * 64})
    with pytest.raises(LabelError, match=f"labels {npy} do not match clip {clip.id}: .*'sample_rate'"):
        load(rec={**good_rec, "sample_rate": 16_000})
    other = {**good_rec, "clips": {**good_rec["clips"], "sha256": ["0" * 64] * 2}}  # another file at that offset
    with pytest.raises(LabelError, match=f"no {root.name} labels for clip {clip.id} .*pack {record} has no entry"):
        load(rec=other)
    assert not LabelStore(root).has(clip)
    codes = np.load(io.BytesIO(good_npy))
    codes[0, -1] = 1500  # in the last frame of the pack: clip 1's (the energy teacher names no size: 1024)
    with pytest.raises(LabelError, match=f"labels {npy} of clip {clip.id}: codebook 0 has code 1500 >= its size 1024"):
        load(arr=codes)
    load()  # restored: fine again
    record.write_text("{not json")
    for check in (lambda s: s.has(clip), lambda s: s.match(S.Corpus(corpus_dir))):
        with pytest.raises(LabelError, match=f"pack record {record} is malformed"):
            check(LabelStore(root))


def test_rejected_clips_are_recorded_in_their_pack_and_not_retried(tmp_path):
    clips = make_corpus(tmp_path / "c", [1.0, 0.01, 1.5], per_shard=2)
    first = run(tmp_path / "c", tmp_path / "labels")
    assert (first.computed, first.rejected) == (2, 1)
    store = LabelStore.open(tmp_path / "labels")
    rec = P.read_record(P.pack_paths(store.root, clips[1].shard)[1])
    assert rec.frame.tolist() == [0, -1] and rec.reason[1].startswith("too short")
    with pytest.raises(LabelError, match=f"clip {clips[1].id} .*rejected when labelled \\(too short"):
        store.load(clips[1])
    t = EnergyTeacher()
    again = run(tmp_path / "c", tmp_path / "labels", t)
    assert (again.clips, again.computed, again.cached, again.rejected, t.calls) == (3, 0, 2, 1, 0)
    assert again.reasons == {"too short": 1}


@pytest.mark.parametrize("legacy", [True, False])
def test_an_old_per_clip_store_is_read_and_extended_in_its_layout(corpus_dir, tmp_path, legacy):
    store = per_clip_store(tmp_path / "labels", legacy)
    corpus = S.Corpus(corpus_dir)
    run(corpus_dir, tmp_path / "labels", stop=4)  # the first two shards
    rejects = "label_rejects.rows-00000000-00000004.csv"
    assert sorted(p.name for p in store.root.iterdir()) == sorted(["clips", TEACHER_FILE, USAGE_FILE, rejects])
    assert [store.has(c) for c in corpus] == [True] * 4 + [False] * 2
    source = open_labels(tmp_path / "labels", corpus)  # what mert pretrain opens
    assert isinstance(source, StoreLabels) and source.usage["clips"] == 4
    s = run(corpus_dir, tmp_path / "labels")
    assert (s.computed, s.cached) == (2, 4) and not (store.root / P.PACK_DIR).exists()
    (store.root / USAGE_FILE).unlink()  # recounted from the clip files
    usage = check_store(LabelStore(store.root), corpus)
    assert usage["clips"] == 6 and usage["frames"] == sum(student_frames(c.length) for c in corpus)
    clip = corpus.clips[4]
    np.testing.assert_array_equal(source.crop(clip, 640, 24_000), store.load(clip)[:, 2 : 2 + student_frames(24_000)])
    with pytest.raises(LabelError, match="is packed|write_shard"):
        LabelStore.create(tmp_path / "new", "x", EnergyTeacher().identity()).write(clip, store.load(clip), 24_000)


def test_ranges_select_whole_shards_and_partition_them():
    rng = np.random.default_rng(0)
    shard = np.repeat(np.arange(40), rng.integers(1, 6, 40))  # 40 shards of 1..5 clips
    starts = set(np.flatnonzero(np.r_[True, shard[1:] != shard[:-1]]).tolist()) | {len(shard)}
    for n in (1, 2, 3, 7, 40, 50):
        blocks = [select_shards(shard, i, n) for i in range(n)]
        assert blocks[0][0] == 0 and blocks[-1][1] == len(shard)
        assert all(a == b for (_, a), (b, _) in zip(blocks, blocks[1:]))  # contiguous, no overlap
        assert all(a in starts and b in starts for a, b in blocks)  # whole shards
        sizes = [len(set(shard[a:b])) for a, b in blocks]
        assert max(sizes) - min(sizes) <= 1
    cut = 57  # two adjacent row ranges: each shard in exactly one, by its first row
    (a0, b0), (a1, b1) = select_shards(shard, stop=cut), select_shards(shard, start=cut)
    assert a0 == 0 and b0 == a1 and b1 == len(shard) and b0 in starts and b0 >= cut
    with pytest.raises(ValueError):
        select_shards(shard, 2, 2)


def test_ranges_write_each_pack_once(corpus_dir, tmp_path):
    summaries = [run(corpus_dir, tmp_path / "labels", shard_index=i, num_shards=2) for i in range(2)]
    assert [s.rows for s in summaries] == [(0, 2), (2, 6)] and sum(s.computed for s in summaries) == 6
    store = LabelStore.open(tmp_path / "labels")
    assert [r.shard for r in sorted(store.records(), key=lambda r: r.shard)] == [f"shard-0000{i}.npy" for i in range(3)]


def test_bulk_checks_read_each_record_once(corpus_dir, tmp_path, monkeypatch):
    corpus = S.Corpus(corpus_dir)
    store = LabelStore.create(tmp_path / "labels", "x", EnergyTeacher().identity())
    write_random_packs(store, corpus)
    store.write_usage(corpus, 64)
    reads = []
    read = P.read_record
    monkeypatch.setattr(P, "read_record", lambda path: reads.append(path.name) or read(path))
    fresh = LabelStore(store.root)
    assert check_store(fresh, corpus)["clips"] == 6 and sorted(reads) == [f"shard-0000{i}.json" for i in range(3)]
    assert fresh.match(corpus).state.tolist() == [1] * 6 and len(reads) == 3  # unchanged records: not read again
    assert [fresh.has(c) for c in corpus] == [True] * 6 and len(reads) == 3


LOW_LIMIT_READER = """
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from mert.data.shards import Corpus
from mert.teachers.labels import LabelStore
from mert.train.labels import StoreLabels
corpus = Corpus(sys.argv[1], verify=False)
store = LabelStore(sys.argv[2])
source = StoreLabels(store, corpus)  # the bulk check: every record read
n = 0
for rep in range(2):
    for clip in corpus.clips:
        n += source.crop(clip, 0, clip.length // 320 * 320).shape[1] > 0
        n += store.load(clip).shape[1] > 0  # a view of a memory map, dropped at once
print(n, source.usage["clips"])
"""


def test_reading_200_packs_under_a_64_file_limit(tmp_path):
    make_corpus(tmp_path / "corpus", [0.05] * 200, per_shard=1)
    corpus = S.Corpus(tmp_path / "corpus")
    store = LabelStore.create(tmp_path / "labels", "x", EnergyTeacher().identity())
    write_random_packs(store, corpus)
    store.write_usage(corpus, 64)
    res = subprocess.run([sys.executable, "-c", LOW_LIMIT_READER, str(tmp_path / "corpus"), str(store.root)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["800", "200"]


@pytest.mark.parametrize("collide", [False, True])
def test_first_of_each_content_key_keeps_row_order(collide):
    """One row per (sha256, length), the first in row order; hashes sharing their first 64 bits stay distinct."""
    rng = np.random.default_rng(0)
    sha = np.array([f"{int(v):064x}" for v in rng.integers(0, 5, 300)], "S64")
    if collide:
        sha[::7] = b"0" * 16 + b"f" * 48  # the prefix of the all-zero hash, another hash
    length = rng.integers(0, 3, 300)
    cols = P.ClipColumns([], np.zeros(300, np.int64), np.arange(300), length, sha)
    rows = np.flatnonzero(rng.random(300) < 0.8)
    seen: dict = {}
    for r in rows.tolist():
        seen.setdefault((sha[r], length[r]), r)
    assert P.first_of_each(cols, rows).tolist() == sorted(seen.values())
    assert P.first_of_each(cols, rows[:1]).tolist() == rows[:1].tolist()
