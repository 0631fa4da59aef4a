"""The ingested corpus format: float32 ``.npy`` shards plus a human-readable manifest.

Layout of a corpus directory::

    corpus.json          format version and sample rate
    manifest.csv         one row per ingested source file (the source of truth)
    rejects.csv          files that could not be ingested: path, reason
    summary.json         counts of the last ingestion run
    shards/shard-00000.npy   1-D float32 audio, the clips of several files back to back

A clip is addressed by ``(shard, offset, length)`` in samples at ``corpus.json``'s rate.
Shards are written atomically and only referenced by the manifest after they are complete,
so a shard that a killed run left behind is never read (it is an orphan and is deleted by
the next ingestion). Shards are memory-mapped on read, so random crops cost no copy of
the whole file; long files are kept whole and cropped at training time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from mert.utils.io import atomic_write_csv, atomic_write_json, read_csv

FORMAT_VERSION = 1
SHARD_DIR = "shards"
MANIFEST = "manifest.csv"
REJECTS = "rejects.csv"
SUMMARY = "summary.json"
CORPUS_META = "corpus.json"


class CorpusError(RuntimeError):
    """A corpus directory is missing, inconsistent, or does not match its manifest."""


@dataclass(frozen=True)
class Clip:
    """One ingested source file, as a row of ``manifest.csv``."""

    id: str  # first 16 hex digits of the content hash: stable across runs and machines
    source: str  # path relative to the ingested source directory
    sha256: str  # hash of the source file's bytes
    duration_s: float  # after resampling
    orig_sr: int
    channels: int
    format: str
    shard: str  # file name under shards/
    offset: int  # first sample in the shard
    length: int  # samples at the corpus rate

    @classmethod
    def from_row(cls, row: dict[str, str]) -> Clip:
        types = {f.name: f.type for f in fields(cls)}
        conv = {"int": int, "float": float, "str": str}
        try:
            return cls(**{k: conv[types[k]](row[k]) for k in types})
        except (KeyError, ValueError) as e:
            raise CorpusError(f"malformed manifest row {row}: {e}") from e

    def to_row(self) -> dict[str, object]:
        return asdict(self)


MANIFEST_FIELDS = [f.name for f in fields(Clip)]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def write_manifest(root: Path, clips: list[Clip]) -> None:
    """Atomically (re)write ``manifest.csv``, sorted by shard then offset."""
    clips = sorted(clips, key=lambda c: (c.shard, c.offset))
    atomic_write_csv(root / MANIFEST, (c.to_row() for c in clips), MANIFEST_FIELDS)


def write_corpus_meta(root: Path, sample_rate: int) -> None:
    atomic_write_json(root / CORPUS_META, {"format_version": FORMAT_VERSION, "sample_rate": sample_rate})


def read_manifest(root: Path) -> list[Clip]:
    return [Clip.from_row(r) for r in read_csv(root / MANIFEST)]


class Corpus:
    """Read access to an ingested corpus.

    Args:
        root: corpus directory written by ``mert ingest``.
        verify: check that every referenced shard exists and is long enough (cheap: reads headers).

    Example::

        corpus = Corpus("data/corpus")
        for clip in corpus:
            wav = corpus.audio(clip, start=0, length=120_000)  # (samples,) float32, 24 kHz
    """

    def __init__(self, root: str | Path, verify: bool = True):
        self.root = Path(root)
        meta_path = self.root / CORPUS_META
        if not meta_path.exists():
            raise CorpusError(f"{self.root} is not an ingested corpus (no {CORPUS_META}); run `mert ingest` first")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise CorpusError(f"{meta_path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
        self.sample_rate = int(meta["sample_rate"])
        self.clips = read_manifest(self.root)
        self._maps: dict[str, np.ndarray] = {}
        if verify:
            self.verify()

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[Clip]:
        return iter(self.clips)

    @property
    def total_seconds(self) -> float:
        return sum(c.length for c in self.clips) / self.sample_rate

    def shard(self, name: str) -> np.ndarray:
        """Memory-mapped 1-D float32 shard."""
        if name not in self._maps:
            path = self.root / SHARD_DIR / name
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError as e:
                raise CorpusError(f"shard {path} listed in the manifest is missing") from e
            except ValueError as e:
                raise CorpusError(f"shard {path} is not a valid .npy file: {e}") from e
            if arr.dtype != np.float32 or arr.ndim != 1:
                raise CorpusError(f"shard {path}: expected 1-D float32, got {arr.dtype} {arr.shape}")
            self._maps[name] = arr
        return self._maps[name]

    def verify(self) -> None:
        """Check every clip lies inside its shard; raise :class:`CorpusError` naming the first bad one."""
        for clip in self.clips:
            n = self.shard(clip.shard).shape[0]
            if clip.offset < 0 or clip.length <= 0 or clip.offset + clip.length > n:
                raise CorpusError(
                    f"clip {clip.id} ({clip.source}) spans [{clip.offset}, {clip.offset + clip.length}) "
                    f"but shard {clip.shard} has {n} samples"
                )

    def audio(self, clip: Clip, start: int = 0, length: int | None = None) -> np.ndarray:
        """Samples ``[start, start+length)`` of ``clip`` as a float32 array (a copy, safe to modify)."""
        length = clip.length - start if length is None else length
        if start < 0 or length < 0 or start + length > clip.length:
            raise ValueError(f"crop [{start}, {start + length}) outside clip {clip.id} of {clip.length} samples")
        s = clip.offset + start
        return np.array(self.shard(clip.shard)[s : s + length], dtype=np.float32)
