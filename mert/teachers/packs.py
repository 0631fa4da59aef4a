"""Packed labels: one uint16 array per audio shard of the corpus, committed by a record written last.

Layout under a store root (``mert.teachers.labels``)::

    packs/shard-00000.npy    (K, F) uint16: the labels of the clips of corpus shard shard-00000.npy back to back,
                             in offset (manifest) order; F = sum of student_frames(length) of its labelled clips
    packs/shard-00000.json   the commit record (below); the pack exists for readers iff this file does

A record holds the teacher hash, sample rate, K and F, and per clip of the shard, as columns in offset order:
``id``, ``sha256``, ``length`` and ``offset`` (samples in the audio shard), ``frame`` (first pack frame, -1 for
a clip rejected by labelling) and ``frames``, and ``reason`` (why a clip was rejected, else ""). A writer
deletes an old record first, then writes the array, then the record (each atomically), so a killed writer
leaves at most an array without a record, which readers ignore and the next run rewrites.

An entry is valid for a clip only if it sits at the clip's shard and offset *and* its (sha256, length) match
the clip's. Bulk questions (which clips of a corpus are labelled) take the records as columns
(:class:`RecordTable`: every pack's entries concatenated) and compare them with the corpus's columns
(:class:`ClipColumns`) vectorised.

The record index, a cache of those columns::

    packs/index/records.npz   the RecordTable of the packs (ids and reasons excepted), plus the stat
                              (st_ino, st_size, st_mtime_ns) each record had when it was read

is one file replaced atomically (its ``meta`` member names the version), so concurrent writers never mix: the
last one wins. A record file is always the truth: :func:`refresh` lists the packs directory once, stats every
record, takes the packs whose stat matches the index from the index, and reads only the changed and new records
(a deleted record drops out). A record stamped within ``RACY_NS`` of the scan that indexed it is read again
(its rewrite could keep the stamp: git's "racily clean" entries). An index of another version, or unreadable,
is ignored and rebuilt; on a read-only store it is simply not written. Clip ids and rejection reasons stay in the
records, read lazily (error messages, the rejects report).
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mert.utils.io import TMP_PREFIX, atomic_save_npy, atomic_write, atomic_write_json

log = logging.getLogger(__name__)

PACK_DIR = "packs"
PACK_VERSION = 1
INDEX_PATH = Path(PACK_DIR, "index", "records.npz")
INDEX_VERSION = 1
RACY_NS = 1_000_000_000
"""Index entries of records stamped less than this (ns) before the scan that stat'ed them are read again."""
MAX_OPEN_PACKS = 32
"""Memory maps kept open per process (each holds a file descriptor): reading holds under ``ulimit -n 256``."""
_KEY_SHIFT = 40  # (shard index << 40) | offset: one int64 key per clip (offsets < 2^40 samples, 1.4 years at 24 kHz)


class PackError(RuntimeError):
    """A pack record is unreadable or malformed (re-raised by the store as ``LabelError``)."""


@dataclass(frozen=True)
class ClipColumns:
    """Clips as columns (manifest order): what the bulk checks compare with the pack records.

    Attributes:
        shard_names: (S,) shard file names; ``shard`` indexes it.
        shard: (N,) int64.
        offset: (N,) int64 first sample in the shard.
        length: (N,) int64 samples.
        sha256: (N,) ``S64`` source-file hashes.
    """

    shard_names: list[str]
    shard: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    sha256: np.ndarray

    @classmethod
    def of(cls, clips: Any) -> ClipColumns:
        """From a ``Corpus`` or a ``ClipList`` (its table's columns, no Clip object made) or any Clip sequence."""
        table = getattr(clips, "table", None)
        if table is not None:
            rows = None if hasattr(clips, "shard_names") else clips.rows  # a Corpus: every row; a ClipList: its own
            pick = (lambda a: np.asarray(a)) if rows is None else (lambda a: np.asarray(a)[rows])
            return cls(list(table.shard_names), pick(table.shard).astype(np.int64), pick(table.offset),
                       pick(table.length), pick(table.sha256))  # fmt: skip
        names = sorted({c.shard for c in clips})
        index = {s: i for i, s in enumerate(names)}
        return cls(names, np.array([index[c.shard] for c in clips], np.int64),
                   np.array([c.offset for c in clips], np.int64), np.array([c.length for c in clips], np.int64),
                   np.array([c.sha256 for c in clips], "S64"))  # fmt: skip

    def __len__(self) -> int:
        return int(self.shard.shape[0])

    def keys(self) -> np.ndarray:
        """(N,) int64 ``(shard << 40) | offset``."""
        return (self.shard.astype(np.int64) << _KEY_SHIFT) | self.offset.astype(np.int64)


@dataclass
class PackRecord:
    """The commit record of one pack (see the module docstring); arrays are (n,) in offset order."""

    shard: str
    teacher: str
    sample_rate: int
    n_codebooks: int
    frames: int
    id: list[str] | None  # None: a view of a RecordTable (RecordTable.full reads it)
    sha256: np.ndarray
    length: np.ndarray
    offset: np.ndarray
    frame: np.ndarray
    count: np.ndarray
    reason: list[str] | None

    def to_json(self) -> dict[str, Any]:
        clips = {"id": self.id, "sha256": [s.decode() for s in self.sha256], "length": self.length.tolist(),
                 "offset": self.offset.tolist(), "frame": self.frame.tolist(), "frames": self.count.tolist(),
                 "reason": self.reason}  # fmt: skip
        head = {"version": PACK_VERSION, "shard": self.shard, "teacher": self.teacher, "frames": self.frames}
        return head | {"sample_rate": self.sample_rate, "n_codebooks": self.n_codebooks, "clips": clips}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PackRecord:
        c = d["clips"]
        rec = cls(str(d["shard"]), str(d["teacher"]), int(d["sample_rate"]), int(d["n_codebooks"]), int(d["frames"]),
                  list(c["id"]), np.array(c["sha256"], "S64"), np.array(c["length"], np.int64),
                  np.array(c["offset"], np.int64), np.array(c["frame"], np.int64), np.array(c["frames"], np.int64),
                  list(c["reason"]))  # fmt: skip
        n = len(rec.id)
        if any(len(a) != n for a in (rec.sha256, rec.length, rec.offset, rec.frame, rec.count, rec.reason)):
            raise ValueError("clip columns of different lengths")
        if n and (np.any(np.diff(rec.offset) <= 0) or int((rec.frame + rec.count).max()) > rec.frames):
            raise ValueError("offsets not increasing, or clip frames past the pack's end")
        return rec

    def find(self, offset: int) -> int | None:
        """Index of the entry at sample ``offset`` of the shard (None if no entry starts there)."""
        i = int(np.searchsorted(self.offset, offset))
        return i if i < len(self.offset) and int(self.offset[i]) == offset else None


def pack_paths(root: Path, shard: str) -> tuple[Path, Path]:
    """(array, record) paths of the pack of audio shard ``shard`` (a file name such as ``shard-00000.npy``)."""
    stem = Path(shard).stem
    return root / PACK_DIR / f"{stem}.npy", root / PACK_DIR / f"{stem}.json"


def read_record(path: Path) -> PackRecord | None:
    """The record at ``path`` (None if absent).

    Raises:
        PackError: unreadable or malformed, naming the file.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PackError(f"pack record {path} is unreadable: {e}") from e
    try:
        return PackRecord.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as e:
        raise PackError(f"pack record {path} is malformed: {e}") from e


def write_pack(root: Path, record: PackRecord, codes: np.ndarray) -> Path:
    """Commit ``codes`` (K, record.frames) uint16 as the pack of ``record.shard``: old record off, array, record.

    Returns:
        The record's path.
    """
    npy, rec = pack_paths(root, record.shard)
    rec.unlink(missing_ok=True)  # uncommit first: no reader may pair the old record with the new array
    atomic_save_npy(npy, np.ascontiguousarray(codes, dtype=np.uint16))
    atomic_write_json(rec, record.to_json())
    return rec


def scan_records(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The committed records: one directory scan, one stat per pack.

    Returns:
        ``(names, stamps)``: (P,) str record file names, sorted, and (P, 3) int64 (st_ino, st_size, st_mtime_ns).
    """
    try:
        entries = list(os.scandir(root / PACK_DIR))
    except FileNotFoundError:
        entries = []
    names, stamps = [], []
    for e in entries:
        if e.name.endswith(".json") and not e.name.startswith(TMP_PREFIX):
            st = e.stat()
            names.append(e.name), stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    order = np.argsort(np.array(names, str), kind="stable")
    return np.array(names, str)[order], np.array(stamps, np.int64).reshape(-1, 3)[order]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, a + n) for a, n in zip(starts, counts)])``, vectorised (int64)."""
    base = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return base + np.arange(int(counts.sum()), dtype=np.int64)


_PACK_COLS = ("name", "shard", "teacher", "stamp", "seen_ns", "sample_rate", "n_codebooks", "frames")
_ENTRY_COLS = ("sha256", "length", "offset", "frame", "count")


@dataclass
class RecordTable:
    """Pack records as columns (the index's form): P packs sorted by record name, E entries in pack order.

    Attributes:
        name: (P,) str record file names (``shard-00000.json``), sorted.
        shard: (P,) str audio shard names.
        teacher: (P,) ``S64`` teacher hashes.
        stamp: (P, 3) int64 (st_ino, st_size, st_mtime_ns) of each record, taken before it was read.
        seen_ns: (P,) int64 wall clock (ns) of the scan that took ``stamp``.
        sample_rate, n_codebooks, frames: (P,) int64, as in :class:`PackRecord`.
        start: (P + 1,) int64: pack p holds entries ``start[p]:start[p + 1]``.
        sha256: (E,) ``S64``; length, offset, frame, count: (E,) int64, as in :class:`PackRecord`.
        root: the store (read lazily for clip ids and reasons; not saved).
    """

    name: np.ndarray
    shard: np.ndarray
    teacher: np.ndarray
    stamp: np.ndarray
    seen_ns: np.ndarray
    sample_rate: np.ndarray
    n_codebooks: np.ndarray
    frames: np.ndarray
    start: np.ndarray
    sha256: np.ndarray
    length: np.ndarray
    offset: np.ndarray
    frame: np.ndarray
    count: np.ndarray
    root: Path | None = None
    _by_shard: dict[str, int] | None = field(default=None, repr=False)
    _full: dict[int, PackRecord] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, records: list[PackRecord], names: np.ndarray, stamps: np.ndarray, seen_ns: int,
           root: Path | None = None) -> RecordTable:  # fmt: skip
        """From ``records`` read from files ``names`` (P,) with ``stamps`` (P, 3) at scan time ``seen_ns``."""
        i64 = lambda v: np.array(v, np.int64)  # noqa: E731
        cat = lambda f, dt: np.concatenate([getattr(r, f) for r in records] + [np.zeros(0, dt)])  # noqa: E731
        sizes = [len(r.offset) for r in records]
        return cls(np.array(names, str), np.array([r.shard for r in records], str),
                   np.array([r.teacher for r in records], "S64"), i64(stamps).reshape(-1, 3),
                   np.full(len(records), seen_ns, np.int64), i64([r.sample_rate for r in records]),
                   i64([r.n_codebooks for r in records]), i64([r.frames for r in records]),
                   i64(np.r_[0, np.cumsum(sizes, dtype=np.int64)]), cat("sha256", "S64"), cat("length", np.int64),
                   cat("offset", np.int64), cat("frame", np.int64), cat("count", np.int64), root)  # fmt: skip

    def __len__(self) -> int:
        return int(self.name.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        """(P,) int64 entries per pack."""
        return np.diff(self.start)

    def take(self, packs: np.ndarray) -> RecordTable:
        """The table of packs ``packs`` (int indices, in that order)."""
        rows = _ranges(self.start[packs], self.sizes[packs])
        per_pack = {k: getattr(self, k)[packs] for k in _PACK_COLS}
        per_entry = {k: getattr(self, k)[rows] for k in _ENTRY_COLS}
        return RecordTable(**per_pack, start=np.r_[0, np.cumsum(self.sizes[packs])].astype(np.int64), **per_entry,
                           root=self.root)  # fmt: skip

    def concat(self, other: RecordTable) -> RecordTable:
        """This table's packs, then ``other``'s, sorted by record name."""
        both = {k: np.concatenate([getattr(self, k), getattr(other, k)]) for k in _PACK_COLS + _ENTRY_COLS}
        start = np.r_[0, np.cumsum(np.r_[self.sizes, other.sizes])].astype(np.int64)
        out = RecordTable(**both, start=start, root=self.root or other.root)
        order = np.argsort(out.name, kind="stable")
        return out if np.all(order == np.arange(len(out))) else out.take(order)

    def record(self, p: int) -> PackRecord:
        """Pack ``p`` as a :class:`PackRecord` of views (``id`` and ``reason`` None: see :meth:`full`)."""
        a, b = int(self.start[p]), int(self.start[p + 1])
        return PackRecord(str(self.shard[p]), self.teacher[p].decode(), int(self.sample_rate[p]),
                          int(self.n_codebooks[p]), int(self.frames[p]), None, self.sha256[a:b], self.length[a:b],
                          self.offset[a:b], self.frame[a:b], self.count[a:b], None)  # fmt: skip

    def pack_of(self, shard: str) -> int | None:
        """The pack of audio shard ``shard`` (None if it has none)."""
        if self._by_shard is None:
            self._by_shard = {s: i for i, s in enumerate(self.shard.tolist())}
        return self._by_shard.get(shard)

    def full(self, p: int) -> PackRecord | None:
        """Pack ``p``'s record file, read once (for its ids and reasons; None if gone).

        Raises:
            PackError: unreadable or malformed.
        """
        if p not in self._full and self.root is not None:
            rec = read_record(self.root / PACK_DIR / str(self.name[p]))
            if rec is None or not np.array_equal(rec.offset, self.record(p).offset):
                return None  # rewritten since: its entries are no longer these
            self._full[p] = rec
        return self._full.get(p)

    def reason(self, p: int, entry: int) -> str:
        """Why entry ``entry`` of pack ``p`` was rejected (read from the record file)."""
        try:
            rec = self.full(p)
        except PackError as e:
            return f"? ({e})"
        return rec.reason[entry] if rec is not None else "? (pack record rewritten or deleted since)"

    def columns(self) -> dict[str, np.ndarray]:
        """What the index file holds."""
        return {k: getattr(self, k) for k in _PACK_COLS + ("start",) + _ENTRY_COLS}

    def valid(self) -> bool:
        """Whether the columns are consistent (shapes, dtypes, sorted names, monotone starts)."""
        p, e = len(self), int(self.sha256.shape[0])
        if self.start.shape != (p + 1,) or self.stamp.shape != (p, 3) or int(self.start[0]) != 0:
            return False
        shapes = all(getattr(self, k).shape == (p,) for k in _PACK_COLS if k != "stamp")
        shapes &= all(getattr(self, k).shape == (e,) for k in _ENTRY_COLS) and int(self.start[-1]) == e
        kinds = self.name.dtype.kind == self.shard.dtype.kind == "U" and self.teacher.dtype == self.sha256.dtype
        ints = all(getattr(self, k).dtype == np.int64 for k in _PACK_COLS[3:] + ("start",) + _ENTRY_COLS[1:])
        return bool(shapes and kinds and ints and self.teacher.dtype == "S64" and np.all(np.diff(self.start) >= 0)
                    and np.all(self.name[1:] > self.name[:-1]))  # fmt: skip


def empty_table(root: Path | None = None) -> RecordTable:
    """A table of no pack."""
    return RecordTable.of([], np.zeros(0, str), np.zeros((0, 3), np.int64), 0, root)


def read_index(root: Path) -> RecordTable | None:
    """The store's record index (None if absent, of another version, unreadable or inconsistent)."""
    path = root / INDEX_PATH
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(z["meta"].tobytes()).get("version") != INDEX_VERSION:
                return None
            table = RecordTable(**{k: z[k] for k in _PACK_COLS + ("start",) + _ENTRY_COLS}, root=root)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        log.info("ignoring the unreadable pack index %s: %s", path, e)
        return None
    return table if table.valid() else None


def write_index(root: Path, table: RecordTable) -> bool:
    """Write ``table`` as the store's record index, atomically; best effort (False: not written, e.g. read-only)."""
    meta = json.dumps({"version": INDEX_VERSION, "packs": len(table), "entries": int(table.start[-1])})
    try:
        with atomic_write(root / INDEX_PATH) as f:
            np.savez(f, meta=np.frombuffer(meta.encode(), np.uint8), **table.columns())
    except OSError as e:
        log.debug("pack index %s not written: %s", root / INDEX_PATH, e)
        return False
    return True


def refresh(root: Path, base: RecordTable, racy_ns: int | None = RACY_NS) -> tuple[RecordTable, bool]:
    """The committed records as a table: ``base``'s packs whose stamp still matches, the others read again.

    Args:
        root: the store.
        base: a table of (some of) its packs (the index, or this process's last table).
        racy_ns: re-read the packs of ``base`` stamped less than this before ``base`` saw them (None: trust
            every matching stamp, for a table this process read itself).

    Returns:
        ``(table, changed)``: ``changed`` if the table differs from ``base`` (an index worth rewriting).

    Raises:
        PackError: a record read is unreadable or malformed.
    """
    seen = time.time_ns()
    names, stamps = scan_records(root)
    pos = np.minimum(np.searchsorted(base.name, names), max(len(base) - 1, 0))
    if not len(base):
        base, pos = empty_table(root), np.zeros(names.shape[0], np.int64)
        same = racy = np.zeros(names.shape[0], bool)
    else:
        same = (base.name[pos] == names) & np.all(base.stamp[pos] == stamps, axis=1)
        racy = np.zeros_like(same) if racy_ns is None else same & (stamps[:, 2] >= base.seen_ns[pos] - racy_ns)
    keep, read = pos[same & ~racy], np.flatnonzero(~same | racy)
    got = [(i, r) for i in read.tolist() if (r := read_record(root / PACK_DIR / str(names[i]))) is not None]
    rows = np.array([i for i, _ in got], np.int64)
    fresh = RecordTable.of([r for _, r in got], names[rows], stamps[rows], seen, root)
    kept = base if np.array_equal(keep, np.arange(len(base))) else base.take(keep)
    table = kept.concat(fresh) if len(fresh) else kept
    resolved = racy & (stamps[:, 2] < seen - (racy_ns or 0))  # racy then, not now: worth indexing again
    return table, bool(np.any(~same) or same.sum() != len(base) or np.any(resolved))


@dataclass(frozen=True)
class Match:
    """Corpus clips matched against pack records.

    Attributes:
        state: (N,) int8: 1 labelled, -1 recorded as rejected by labelling, 0 no valid entry (unlabelled).
        pack: (N,) int64 pack of ``table`` (-1 where ``state`` is 0).
        entry: (N,) int64 entry of that pack (-1 where ``state`` is 0).
        table: the records matched against.
    """

    state: np.ndarray
    pack: np.ndarray
    entry: np.ndarray
    table: RecordTable

    def reason(self, i: int) -> str:
        """Why clip ``i`` (``state[i] == -1``) was rejected when its pack was labelled (read from its record)."""
        return self.table.reason(int(self.pack[i]), int(self.entry[i]))


def _shard_index(table: RecordTable, shard_names: list[str]) -> np.ndarray:
    """(P,) int64: each pack's audio shard as an index into ``shard_names`` (-1: not there)."""
    names = np.array(shard_names, str)
    if not names.shape[0] or not len(table):
        return np.full(len(table), -1, np.int64)
    order = np.argsort(names, kind="stable")
    pos = np.minimum(np.searchsorted(names[order], table.shard), names.shape[0] - 1)
    return np.where(names[order][pos] == table.shard, order[pos], -1).astype(np.int64)


def match(table: RecordTable, cols: ClipColumns) -> Match:
    """Match every clip of ``cols`` with the entry at its shard and offset, valid only if (sha256, length) agree.

    Vectorised: a sort of the entries (skipped when already in key order) and one ``searchsorted`` of the clips.
    """
    n, sizes = len(cols), table.sizes
    shard = np.repeat(_shard_index(table, cols.shard_names), sizes)  # (E,)
    sel = np.flatnonzero(shard >= 0)
    none = np.full(n, -1, np.int64)
    if not sel.shape[0] or not n:
        return Match(np.zeros(n, np.int8), none, none.copy(), table)
    key = (shard[sel] << _KEY_SHIFT) | table.offset[sel]
    order = None if np.all(key[1:] > key[:-1]) else np.argsort(key, kind="stable")
    want = cols.keys()
    pos = np.minimum(np.searchsorted(key if order is None else key[order], want), key.shape[0] - 1)
    j = sel[pos if order is None else order[pos]]  # (N,) candidate entry, in table numbering
    ok = (table.offset[j] == cols.offset) & (shard[j] == cols.shard)
    ok &= (table.sha256[j] == cols.sha256) & (table.length[j] == cols.length)
    state = np.where(ok, np.where(table.frame[j] >= 0, 1, -1), 0).astype(np.int8)
    pack = np.searchsorted(table.start, j, side="right") - 1
    return Match(state, np.where(ok, pack, -1), np.where(ok, j - table.start[pack], -1), table)


def first_of_each(cols: ClipColumns, rows: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` that hold the first occurrence of their (sha256, length), in row order.

    One sort of a 64-bit key per row (the first 64 bits of the hash mixed with the length), the first row of each
    run of equal keys by ``minimum.reduceat``; exact: a key shared by two different (hash, length) pairs (about
    3e-8 for 10^6 files) falls back to sorting the full hashes.
    """
    if rows.shape[0] < 2:
        return rows
    sha, length = cols.sha256[rows], cols.length[rows]
    key = _prefix64(sha) ^ (length.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))  # wraps: a mix, not a sum
    order = np.argsort(key)
    k = key[order]
    run = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])  # (G,) first position of each run of equal keys
    same = np.ones(rows.shape[0], bool)
    same[run] = False  # same[i]: position i continues the run of i - 1
    s, n = sha[order], length[order]
    if np.any(s[1:][same[1:]] != s[:-1][same[1:]]) or np.any(n[1:][same[1:]] != n[:-1][same[1:]]):
        keys = np.empty(rows.shape[0], [("sha", "S64"), ("length", np.int64)])
        keys["sha"], keys["length"] = sha, length
        _, first = np.unique(keys, return_index=True)
        return rows[np.sort(first)]
    return rows[np.sort(np.minimum.reduceat(order, run))]


_NIBBLE = np.zeros(256, np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _prefix64(sha: np.ndarray) -> np.ndarray:
    """(N,) uint64: the first 16 hex digits of (N,) ``S64`` hashes (temporaries of 8 bytes per hash)."""
    digits = np.ascontiguousarray(sha, "S64").view(np.uint8).reshape(-1, 64)[:, :16]
    packed = (_NIBBLE[digits[:, 0::2]] << 4) | _NIBBLE[digits[:, 1::2]]  # (N, 8) bytes, most significant first
    return np.ascontiguousarray(packed).view(">u8").reshape(-1).astype(np.uint64)


def frame_index(record: PackRecord, entries: np.ndarray) -> np.ndarray:
    """(F',) int64 pack frames of ``entries`` (indices into ``record``), concatenated."""
    return _ranges(record.frame[entries], record.count[entries])


class PackMaps:
    """A bounded LRU cache of pack memory maps (each map holds one dup'd file descriptor).

    Args:
        size: most maps kept open.
    """

    def __init__(self, size: int = MAX_OPEN_PACKS):
        self.size = size
        self._maps: OrderedDict[Path, np.ndarray] = OrderedDict()

    def get(self, path: Path) -> np.ndarray:
        """The memory-mapped array at ``path`` (opened on a miss, evicting the least recently used).

        Raises:
            OSError, ValueError: unreadable (from ``np.load``).
        """
        arr = self._maps.get(path)
        if arr is not None:
            self._maps.move_to_end(path)
            return arr
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        self._maps[path] = arr
        while len(self._maps) > self.size:
            self._maps.popitem(last=False)  # its descriptor closes once no caller's view holds it
        return arr

    def drop(self, path: Path) -> None:
        self._maps.pop(path, None)

    def clear(self) -> None:
        self._maps.clear()
