"""Ingestion: every kind of bad input is quarantined with a reason, the rest is ingested, counts reconcile."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mert.data import shards as S
from mert.data.ingest import IngestError, IngestParams, ingest
from tests.conftest import noise, sine

P = IngestParams(workers=1)


def _rejects(out: Path) -> dict[str, str]:
    with open(out / S.REJECTS) as f:
        return {r["path"]: r["reason"] for r in csv.DictReader(f)}


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def messy(tmp_path: Path, write_audio) -> Path:
    """A source tree with good files in several formats/rates/channels and every kind of bad input."""
    write_audio("src/good/a.wav", sine(4.0, 44100, 440, channels=2), 44100)
    write_audio("src/good/b.flac", sine(3.5, 16000, 220), 16000)
    write_audio("src/good/c.ogg", noise(5.0, 48000, seed=1), 48000)
    write_audio("src/good/d.mp3", sine(6.0, 24000, 330), 24000)
    write_audio("src/good/e.wav", noise(3.2, 22050, seed=2), 22050, subtype="FLOAT")
    write_audio("src/bad/copy-of-a.wav", sine(4.0, 44100, 440, channels=2), 44100)  # duplicate content
    (tmp_path / "src/bad/empty.wav").write_bytes(b"")
    (tmp_path / "src/bad/text.mp3").write_text("not audio at all\n")
    (tmp_path / "src/bad/song.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 100)
    nan = noise(4.0, 24000, seed=3)
    nan[100:110] = np.nan
    write_audio("src/bad/nan.wav", nan, 24000, subtype="FLOAT")
    inf = noise(4.0, 24000, seed=4)
    inf[5] = np.inf
    write_audio("src/bad/inf.wav", inf, 24000, subtype="FLOAT")
    write_audio("src/bad/silent.flac", np.zeros(24000 * 4, np.float32), 24000)
    write_audio("src/bad/short.wav", sine(1.0), 24000)
    _long_header_wav(tmp_path / "src/bad/long.wav", seconds=7200)
    for name, sub in [("trunc.wav", "PCM_16"), ("trunc.flac", "PCM_16"), ("trunc.ogg", "VORBIS")]:
        p = write_audio(f"src/bad/{name}", noise(4.0, 24000, seed=5), 24000, subtype=sub)
        _truncate(p)
    (tmp_path / "src/notes.txt").write_text("ignored: not an audio extension\n")
    return tmp_path / "src"


def _long_header_wav(path: Path, seconds: int) -> None:
    """A valid 8 kHz 8-bit WAV claiming `seconds` of audio, as a sparse file (no real disk use)."""
    n = seconds * 8000
    header = b"RIFF" + (36 + n).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    header += (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    header += (8000).to_bytes(4, "little") + (1).to_bytes(2, "little") + (8).to_bytes(2, "little")
    header += b"data" + n.to_bytes(4, "little")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header + bytes([128]) * 8000)
        f.truncate(44 + n)


EXPECTED_REASONS = {
    "bad/copy-of-a.wav": "duplicate content of bad/",  # the first in sorted order is kept
    "bad/empty.wav": "empty file",
    "bad/text.mp3": "not decodable as audio",
    "bad/song.m4a": "unsupported format '.m4a'",
    "bad/nan.wav": "NaN/inf",
    "bad/inf.wav": "NaN/inf",
    "bad/silent.flac": "silent",
    "bad/short.wav": "too short",
    "bad/long.wav": "too long",
    "bad/trunc.wav": "truncated",
    "bad/trunc.flac": "corrupt or truncated",
    "bad/trunc.ogg": "truncated",
}


def test_every_bad_input_is_quarantined_and_the_rest_ingested(messy: Path, tmp_path: Path):
    out = tmp_path / "corpus"
    s = ingest(messy, out, P, progress=False)
    rejects = _rejects(out)
    # copy-of-a sorts before good/a.wav, so the *good* copy is the duplicate here: check both ways.
    dup = "bad/copy-of-a.wav" if "bad/copy-of-a.wav" in rejects else "good/a.wav"
    assert rejects.pop(dup).startswith("duplicate content of ")
    expected = {k: v for k, v in EXPECTED_REASONS.items() if k != "bad/copy-of-a.wav"}
    assert set(rejects) == set(expected), rejects
    for path, fragment in expected.items():
        assert fragment in rejects[path], (path, rejects[path])
    assert s.found == 17 and s.ingested == 5 and s.rejected == 12 and s.unchanged == 0
    assert s.found == s.ingested + s.unchanged + s.rejected
    summary = json.loads((out / S.SUMMARY).read_text())
    assert summary["ingested"] == 5


def test_corpus_content_is_mono_24k_float32_and_matches_source(messy: Path, tmp_path: Path):
    out = tmp_path / "corpus"
    ingest(messy, out, P, progress=False)
    corpus = S.Corpus(out)
    assert corpus.sample_rate == 24000 and len(corpus) == 5
    by_src = {c.source.split("/")[-1]: c for c in corpus}
    b = by_src["b.flac"]  # 3.5 s at 16 kHz -> 84000 samples at 24 kHz
    assert b.orig_sr == 16000 and b.length == 84000 and b.channels == 1
    x = corpus.audio(b)
    assert x.dtype == np.float32 and x.ndim == 1
    # a 220 Hz sine stays a 220 Hz sine after resampling
    spec = np.abs(np.fft.rfft(x[2400:-2400]))
    assert abs(np.argmax(spec) * 24000 / len(x[2400:-2400]) - 220) < 2
    d = by_src["d.mp3"]
    assert abs(d.length / 24000 - 6.0) < 0.1
    for c in corpus:
        assert c.sha256.startswith(c.id) and np.isfinite(corpus.audio(c)).all()


def test_rerun_is_a_noop_and_new_files_only_are_ingested(messy: Path, tmp_path: Path, write_audio):
    out = tmp_path / "corpus"
    ingest(messy, out, P, progress=False)
    shards_before = sorted(p.name for p in (out / S.SHARD_DIR).iterdir())
    manifest_before = (out / S.MANIFEST).read_text()
    s2 = ingest(messy, out, P, progress=False)
    assert (s2.ingested, s2.unchanged, s2.rejected) == (0, 5, 12)
    assert (out / S.MANIFEST).read_text() == manifest_before
    assert sorted(p.name for p in (out / S.SHARD_DIR).iterdir()) == shards_before
    write_audio("src/good/new.wav", noise(3.5, 24000, seed=9), 24000)
    s3 = ingest(messy, out, P, progress=False)
    assert (s3.ingested, s3.unchanged, s3.found) == (1, 5, 18)
    assert len(S.Corpus(out)) == 6


def test_changed_and_removed_files_are_dropped_from_the_manifest(tmp_path: Path, write_audio):
    write_audio("src/a.wav", sine(3.5, freq=300), 24000)
    write_audio("src/b.wav", sine(3.5, freq=500), 24000)
    out = tmp_path / "corpus"
    ingest(tmp_path / "src", out, P, progress=False)
    old_a = {c.source: c for c in S.Corpus(out)}["a.wav"]
    write_audio("src/a.wav", sine(4.5, freq=700), 24000)  # changed content
    (tmp_path / "src/b.wav").unlink()
    s = ingest(tmp_path / "src", out, P, progress=False)
    assert (s.ingested, s.unchanged, s.removed) == (1, 0, 2)
    corpus = S.Corpus(out)
    assert [c.source for c in corpus] == ["a.wav"] and corpus.clips[0].sha256 != old_a.sha256
    assert corpus.clips[0].length == int(4.5 * 24000)


def test_parallel_workers_give_the_same_corpus(messy: Path, tmp_path: Path):
    ingest(messy, tmp_path / "one", IngestParams(workers=1), progress=False)
    ingest(messy, tmp_path / "two", IngestParams(workers=2), progress=False)
    assert (tmp_path / "one" / S.MANIFEST).read_text() == (tmp_path / "two" / S.MANIFEST).read_text()
    for shard in (tmp_path / "one" / S.SHARD_DIR).iterdir():
        assert shard.read_bytes() == (tmp_path / "two" / S.SHARD_DIR / shard.name).read_bytes()


def test_small_shards_and_killed_run_leaves_nothing_half_written(tmp_path: Path, write_audio, monkeypatch):
    for i in range(6):
        write_audio(f"src/{i}.wav", noise(3.5, 24000, seed=i), 24000)
    out = tmp_path / "corpus"
    p = IngestParams(workers=1, shard_seconds=7.0)  # two files per shard
    calls = {"n": 0}

    import mert.data.ingest as ing

    orig = ing.atomic_save_npy

    def dying_save(path, arr):
        calls["n"] += 1
        if calls["n"] == 2:  # die while writing the second shard: leave a temp file behind
            (Path(path).parent / ".tmp-shard-00001.npy.partial").write_bytes(b"\x93NUMPY garbage")
            raise KeyboardInterrupt("killed")
        orig(path, arr)

    monkeypatch.setattr(ing, "atomic_save_npy", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "src", out, p, progress=False)
    corpus = S.Corpus(out)  # what the killed run left is consistent and readable
    assert len(corpus) == 2 and {c.shard for c in corpus} == {"shard-00000.npy"}
    monkeypatch.setattr(ing, "atomic_save_npy", orig)
    (out / S.SHARD_DIR / "shard-00007.npy").write_bytes(b"orphan from a killed run")
    s = ingest(tmp_path / "src", out, p, progress=False)
    assert (s.ingested, s.unchanged) == (4, 2)
    names = sorted(x.name for x in (out / S.SHARD_DIR).iterdir())
    assert names == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]  # orphan and temp file gone
    assert len(S.Corpus(out)) == 6


def test_unreadable_file_is_reported(tmp_path: Path, write_audio, monkeypatch):
    write_audio("src/ok.wav", sine(3.5), 24000)
    locked = write_audio("src/locked.wav", sine(3.5, freq=500), 24000)
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads anything: simulate the OS refusing, through the same code path
        import mert.data.ingest as ing

        real = ing.sha256_file

        def deny(path, *a, **k):
            if str(path).endswith("locked.wav"):
                raise PermissionError(13, "Permission denied")
            return real(path, *a, **k)

        monkeypatch.setattr(ing, "sha256_file", deny)
    s = ingest(tmp_path / "src", tmp_path / "out", P, progress=False)
    assert (s.ingested, s.rejected) == (1, 1)
    assert "Permission denied" in _rejects(tmp_path / "out")["locked.wav"]


def test_run_level_errors_are_clear(tmp_path: Path):
    with pytest.raises(IngestError, match="input directory not found"):
        ingest(tmp_path / "missing", tmp_path / "out", P, progress=False)
    (tmp_path / "src").mkdir()
    with pytest.raises(IngestError, match="must not be inside"):
        ingest(tmp_path / "src", tmp_path / "src" / "out", P, progress=False)
    s = ingest(tmp_path / "src", tmp_path / "out", P, progress=False)  # empty dir: a valid, empty corpus
    assert s.found == 0 and len(S.Corpus(tmp_path / "out")) == 0


def test_disk_space_is_checked_before_work(tmp_path: Path, write_audio, monkeypatch):
    write_audio("src/a.wav", sine(3.5), 24000)
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(IngestError, match="not enough disk space"):
        ingest(tmp_path / "src", tmp_path / "out", P, progress=False)


def test_corpus_detects_a_shard_that_does_not_match_the_manifest(tmp_path: Path, write_audio):
    write_audio("src/a.wav", sine(3.5), 24000)
    out = tmp_path / "out"
    ingest(tmp_path / "src", out, P, progress=False)
    shard = out / S.SHARD_DIR / "shard-00000.npy"
    buf = io.BytesIO()
    np.save(buf, np.zeros(100, np.float32))
    shard.write_bytes(buf.getvalue())
    with pytest.raises(S.CorpusError, match="shard-00000.npy has 100 samples"):
        S.Corpus(out)
    with pytest.raises(S.CorpusError, match="not an ingested corpus"):
        S.Corpus(tmp_path)


def test_write_corpus_arrays_packs_clips_into_shards_a_corpus_reads_back(tmp_path):
    from mert.data.shards import Corpus
    from mert.data.synth import write_corpus_arrays

    audio = [np.full(n, i, np.float32) for i, n in enumerate([100, 200, 300])]
    clips = write_corpus_arrays(tmp_path, [(f"{i}.wav", a, "ab" * 32 if i == 2 else None) for i, a in enumerate(audio)],
                         24_000, per_shard=2)  # fmt: skip
    assert [(c.shard, c.offset, c.length) for c in clips] == [
        ("shard-00000.npy", 0, 100), ("shard-00000.npy", 100, 200), ("shard-00001.npy", 0, 300)]  # fmt: skip
    assert clips[2].id == "ab" * 8 and clips[0].sha256 == hashlib.sha256(audio[0].tobytes()).hexdigest()
    corpus = Corpus(tmp_path)
    for clip, a in zip(corpus, audio):
        np.testing.assert_array_equal(corpus.audio(clip), a)
