"""The ingested corpus format: ``.npy`` audio shards, a human-readable manifest, and its columnar clip table.

Layout of a corpus directory::

    corpus.json          format version, sample rate, shard dtype (float32, or int16 PCM)
    manifest.csv         one row per ingested source file (the source of truth)
    table/               the manifest as memory-mapped numpy columns (``mert.data.table``), rebuilt when stale
    rejects.csv          files that could not be ingested: path, reason
    summary.json         counts of the last ingestion run
    shards/shard-00000.npy   1-D audio (float32, or int16 = round(x * 32768)), clips back to back

A clip is addressed by ``(shard, offset, length)`` in samples at ``corpus.json``'s rate.
Shards are written atomically and only referenced by the manifest after they are complete,
so a shard that a killed run left behind is never read (it is an orphan and is deleted or, if its
``shard-*.csv`` row file was committed, adopted by the next ingestion).

Reading scales with the corpus, not with the number of shards kept open: :class:`Corpus` opens the table (a
stat and a few memory maps, no per-clip object), verifies every clip against its shard's length (a stat per
shard; the ``.npy`` header is read only when the shard changed since it was last verified), and reads crops with
``preadv`` from file descriptors kept in a bounded LRU cache (``max_open_shards``), so any corpus reads under
``ulimit -n 256`` and creates no memory map per shard (``vm.max_map_count``).
int16 shards are dequantised on read (``x = q / 32768``, exact in float32), so every reader sees float32.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from mert.data.table import TABLE_DIR, ClipList, ClipTable, TableError, manifest_stat, open_table
from mert.utils.io import atomic_write, atomic_write_json, read_csv

FORMAT_VERSION = 1
SHARD_DIR = "shards"
MANIFEST = "manifest.csv"
REJECTS = "rejects.csv"
SUMMARY = "summary.json"
CORPUS_META = "corpus.json"
SHARD_DTYPES = ("float32", "int16")
INT16_SCALE = 32768.0
"""int16 shards hold ``clip(round(x * 32768), -32768, 32767)``; read back as ``q / 32768`` (libsndfile's read
scale), so the error is at most 2^-16 and 1.0 reads as 32767 / 32768."""
SHARD_CACHE = "shards.npz"
"""Under ``table/``: each shard's (size, mtime_ns, inode) and sample count when last verified."""
MAX_OPEN_SHARDS = 64
"""Default bound of the shard file-descriptor cache of :meth:`Corpus.read`."""


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
    size: int = -1  # the source file's size in bytes at ingestion (-1: not recorded)
    mtime_ns: int = -1  # its modification time (ns); with size, the cheap "unchanged" check of a re-run

    @classmethod
    def from_row(cls, row: dict[str, str]) -> Clip:
        types = {f.name: f.type for f in fields(cls)}
        conv = {"int": int, "float": float, "str": str}
        try:
            return cls(**{k: conv[types[k]](row[k]) for k in types if k in row or k not in ("size", "mtime_ns")})
        except (KeyError, ValueError) as e:
            raise CorpusError(f"malformed manifest row {row}: {e}") from e

    def to_row(self) -> dict[str, object]:
        return asdict(self)


MANIFEST_FIELDS = [f.name for f in fields(Clip)]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def shard_index(name: str) -> int:
    """``shard-00042.npy`` -> 42."""
    return int(name[6:-4])


def write_manifest(root: Path, clips: list[Clip]) -> None:
    """Atomically (re)write ``manifest.csv``, sorted by shard then offset, and its table (``table/``)."""
    clips = sorted(clips, key=lambda c: (c.shard, c.offset))
    write_table(root, ClipTable.from_rows(clips, {}))


def write_table(root: Path, table: ClipTable) -> None:
    """Write ``table`` (rows in manifest order) as ``manifest.csv``, then as ``table/`` stamped with its stat."""
    import pandas as pd

    from mert.utils.io import atomic_write, sha256_file

    df = pd.DataFrame({k: _column_for_csv(table, k) for k in MANIFEST_FIELDS})
    with atomic_write(root / MANIFEST, "w") as f:
        df.to_csv(f, index=False, lineterminator="\r\n")  # csv.DictWriter's dialect, as before
    size, mtime = manifest_stat(root / MANIFEST)
    table.manifest = {"size": size, "mtime_ns": mtime, "sha256": sha256_file(root / MANIFEST)}
    table.save(root)


def _column_for_csv(table: ClipTable, k: str):
    c = table.columns
    if k == "source":
        return table.sources()  # one pass over the blob, not a slice per row
    if k == "shard":
        return np.asarray(table.shard_names, dtype=object)[np.asarray(c["shard"])] if table.n else []
    if k == "format":
        return np.asarray(table.format_names, dtype=object)[np.asarray(c["format"])] if table.n else []
    if k in ("id", "sha256"):
        return np.char.decode(np.asarray(c[k]), "ascii")
    if k == "duration_s":
        return [repr(float(x)) for x in c[k]]  # str(float) as csv.DictWriter wrote it
    return np.asarray(c[k])


def write_corpus_meta(root: Path, sample_rate: int, dtype: str = "float32") -> None:
    if dtype not in SHARD_DTYPES:
        raise ValueError(f"shard dtype {dtype!r} not in {SHARD_DTYPES}")
    meta = {"format_version": FORMAT_VERSION, "sample_rate": sample_rate, "dtype": dtype}
    atomic_write_json(root / CORPUS_META, meta)


def read_manifest(root: Path) -> list[Clip]:
    return [Clip.from_row(r) for r in read_csv(root / MANIFEST)]


def quantize_int16(x: np.ndarray) -> np.ndarray:
    """(n,) float audio in [-1, 1] -> int16 PCM ``clip(round(x * 32768))`` (see :data:`INT16_SCALE`)."""
    return np.clip(np.rint(np.asarray(x, np.float64) * INT16_SCALE), -32768, 32767).astype(np.int16)


def default_max_open_shards() -> int:
    """:data:`MAX_OPEN_SHARDS`, or a quarter of the soft open-file limit if that is lower."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(1, min(MAX_OPEN_SHARDS, soft // 4)) if soft != resource.RLIM_INFINITY else MAX_OPEN_SHARDS


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of a ``.npy`` file from its header (the file is closed again)."""
    with open(path, "rb") as f:
        return _header(f, path)


def _header(f, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from the ``.npy`` header at ``f``'s position (left just past it)."""
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except ValueError as e:
        raise CorpusError(f"shard {path} is not a valid .npy file: {e}") from e
    if fortran and len(shape) > 1:
        raise CorpusError(f"shard {path} is not a valid .npy file: Fortran order")
    return shape, dtype


class Corpus:
    """Read access to an ingested corpus.

    Args:
        root: corpus directory written by ``mert ingest``.
        verify: check that every referenced shard exists, has the corpus's dtype and is long enough (reads each
            shard's ``.npy`` header once; no file stays open).
        max_open_shards: bound of the open shard files (default :func:`default_max_open_shards`).

    Attributes:
        table: the :class:`mert.data.table.ClipTable` (numpy columns, manifest order).
        clips: a :class:`mert.data.table.ClipList` of :class:`Clip` (made on access).
        dtype: ``"float32"`` or ``"int16"``: how the shards store samples (reads always give float32).

    Example::

        corpus = Corpus("data/corpus")
        for clip in corpus.clips:
            wav = corpus.audio(clip, start=0, length=120_000)  # (samples,) float32, 24 kHz
    """

    def __init__(self, root: str | Path, verify: bool = True, max_open_shards: int | None = None):
        self.root = Path(root)
        meta_path = self.root / CORPUS_META
        if not meta_path.exists():
            raise CorpusError(f"{self.root} is not an ingested corpus (no {CORPUS_META}); run `mert ingest` first")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise CorpusError(f"{meta_path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
        self.sample_rate = int(meta["sample_rate"])
        self.dtype = str(meta.get("dtype", "float32"))
        if self.dtype not in SHARD_DTYPES:
            raise CorpusError(f"{meta_path}: shard dtype {self.dtype!r} not in {SHARD_DTYPES}")
        try:
            self.table = open_table(self.root)
        except TableError as e:
            raise CorpusError(str(e)) from e
        self.clips = ClipList(self.table, _clip)
        self.max_open_shards = max_open_shards or default_max_open_shards()
        self._fds: OrderedDict[str, tuple[int, int, int]] = OrderedDict()  # read(): (fd, data offset, samples)
        if verify:
            self.verify()

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        return iter(self.clips)

    def __getstate__(self) -> dict:
        """Pickled by path (a loader process reopens the table's maps; nothing per clip is copied)."""
        return {"root": self.root, "max_open_shards": self.max_open_shards}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], verify=False, max_open_shards=state["max_open_shards"])

    @property
    def shard_names(self) -> list[str]:
        return self.table.shard_names

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of ``manifest.csv`` (recorded in the table when it was written: no re-hash)."""
        return self.table.manifest.get("sha256", "")

    @property
    def total_seconds(self) -> float:
        return float(np.asarray(self.table.length).sum()) / self.sample_rate

    def verify(self, save_cache: bool = False) -> None:
        """Check every clip lies inside its shard; raise :class:`CorpusError` naming the first bad one.

        Each shard is stat-ed; its sample count comes from ``table/shards.npz`` when the shard's (size, mtime,
        inode) match what that cache recorded, else from its ``.npy`` header (opened, read, closed).

        Args:
            save_cache: rewrite ``table/shards.npz`` when a header was read (ingestion does; readers never write
                into the corpus).
        """
        t = self.table
        if not t.n:
            return
        off, length, shard = (np.asarray(t.columns[k]) for k in ("offset", "length", "shard"))
        bad = np.flatnonzero((off < 0) | (length <= 0))
        need = np.zeros(len(t.shard_names), np.int64)
        np.maximum.at(need, shard, off + length)
        have = self._shard_lengths(save_cache)
        short = np.flatnonzero(need > have)
        if short.size:
            s = int(short[0])
            bad = np.union1d(bad, np.flatnonzero((shard == s) & (off + length > have[s])))
        if bad.size:
            c = self.clips[int(bad[0])]
            n = int(have[t.shard_names.index(c.shard)])
            raise CorpusError(
                f"clip {c.id} ({c.source}) spans [{c.offset}, {c.offset + c.length}) "
                f"but shard {c.shard} has {n} samples"
            )

    def _shard_lengths(self, save: bool) -> np.ndarray:
        """(S,) samples of each shard of the table (see :meth:`verify`)."""
        names = self.table.shard_names
        d = str(self.root / SHARD_DIR)
        stat = np.zeros((len(names), 3), np.int64)  # size, mtime_ns, inode
        for i, name in enumerate(names):
            try:
                st = os.stat(f"{d}/{name}")
            except FileNotFoundError as e:
                raise CorpusError(f"shard {d}/{name} listed in the manifest is missing") from e
            stat[i] = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._cached_lengths(names)
        lengths = np.full(len(names), -1, np.int64)
        if cached is not None:
            same = (cached[0] == stat).all(axis=1)
            lengths[same] = cached[1][same]
        todo = np.flatnonzero(lengths < 0)
        for i in todo:
            lengths[i] = self._shard_samples(names[int(i)])
        if todo.size and save:
            self._save_lengths(names, stat, lengths)
        return lengths

    def _cached_lengths(self, names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(self.root / TABLE_DIR / SHARD_CACHE) as z:
                if z["names"].shape == (len(names),) and (z["names"] == np.asarray(names, dtype="S")).all():
                    return z["stat"], z["samples"]
        except (OSError, ValueError, KeyError):
            pass
        return None

    def _save_lengths(self, names: list[str], stat: np.ndarray, lengths: np.ndarray) -> None:
        if not os.access(self.root / TABLE_DIR, os.W_OK):
            return
        with contextlib.suppress(OSError), atomic_write(self.root / TABLE_DIR / SHARD_CACHE) as f:
            np.savez(f, names=np.asarray(names, dtype="S"), stat=stat, samples=lengths)

    def _shard_samples(self, name: str) -> int:
        path = self.root / SHARD_DIR / name
        try:
            shape, dtype = read_npy_header(path)
        except FileNotFoundError as e:
            raise CorpusError(f"shard {path} listed in the manifest is missing") from e
        except (OSError, ValueError) as e:
            raise CorpusError(f"shard {path} is not a valid .npy file: {e}") from e
        if dtype != np.dtype(self.dtype) or len(shape) != 1:
            raise CorpusError(f"shard {path}: expected 1-D {self.dtype}, got {dtype} {shape}")
        return int(shape[0])

    def read(self, shard: str, first: int, length: int, out: np.ndarray | None = None) -> np.ndarray:
        """Samples ``[first, first + length)`` of a shard as float32 (dequantised from int16), into ``out``.

        Read with one ``preadv`` from a file descriptor kept in a bounded LRU cache (``max_open_shards``): no
        memory map per shard (no page-table set-up per crop, nothing against ``vm.max_map_count``), one copy
        from the page cache into ``out``.

        Args:
            shard: shard file name.
            first: first sample in the shard.
            length: samples.
            out: (length,) float32 destination (default: a new array).

        Returns:
            ``out``: (length,) float32, a copy (safe to modify).

        Raises:
            CorpusError: the shard is missing, not a 1-D ``.npy`` of the corpus dtype, or shorter than the read.
        """
        fd, start, n = self._open(shard)
        if first < 0 or length < 0 or first + length > n:
            raise CorpusError(f"read [{first}, {first + length}) outside shard {shard} of {n} samples")
        if out is None:
            out = np.empty(length, np.float32)
        direct = self.dtype == "float32" and out.flags.c_contiguous and out.dtype == np.float32
        buf = out if direct else np.empty(length, np.dtype(self.dtype))
        itemsize = buf.itemsize
        got = os.preadv(fd, [memoryview(buf).cast("B")], start + first * itemsize) if length else 0
        if got != length * itemsize:
            raise CorpusError(f"shard {self.root / SHARD_DIR / shard} is truncated: read {got} of {length * itemsize} "
                              f"bytes at sample {first}")  # fmt: skip
        if buf is not out:
            if buf.dtype == np.int16:
                np.multiply(buf, np.float32(1.0 / INT16_SCALE), out=out, casting="unsafe")
            else:
                out[...] = buf
        return out

    def _open(self, name: str) -> tuple[int, int, int]:
        """``(fd, first data byte, samples)`` of shard ``name``, from the LRU cache or opened and checked now."""
        hit = self._fds.get(name)
        if hit is not None:
            self._fds.move_to_end(name)
            return hit
        path = self.root / SHARD_DIR / name
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as e:
            raise CorpusError(f"shard {path} listed in the manifest is missing") from e
        except OSError as e:
            raise CorpusError(f"shard {path} cannot be opened: {e.strerror or e}") from e
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                shape, dtype = _header(f, path)
                start = f.tell()
        except BaseException:
            os.close(fd)
            raise
        if dtype != np.dtype(self.dtype) or len(shape) != 1:
            os.close(fd)
            raise CorpusError(f"shard {path}: expected 1-D {self.dtype}, got {dtype} {shape}")
        self._fds[name] = entry = (fd, start, int(shape[0]))
        while len(self._fds) > self.max_open_shards:
            os.close(self._fds.popitem(last=False)[1][0])
        return entry

    def close(self) -> None:
        """Close the cached shard file descriptors (also done when the corpus is garbage collected)."""
        fds = getattr(self, "_fds", {})
        while fds:
            with contextlib.suppress(OSError):
                os.close(fds.popitem()[1][0])

    def __del__(self) -> None:
        self.close()

    def audio(self, clip: Clip, start: int = 0, length: int | None = None) -> np.ndarray:
        """Samples ``[start, start+length)`` of ``clip`` as a float32 array (a copy, safe to modify)."""
        length = clip.length - start if length is None else length
        if start < 0 or length < 0 or start + length > clip.length:
            raise ValueError(f"crop [{start}, {start + length}) outside clip {clip.id} of {clip.length} samples")
        return self.read(clip.shard, clip.offset + start, length)


def _clip(row: dict) -> Clip:
    return Clip(**row)
