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
the clip's. Bulk questions (which clips of a corpus are labelled) read every record once (one file per shard,
never one per clip) and compare them with the corpus's columns (:class:`ClipColumns`) vectorised.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mert.utils.io import TMP_PREFIX, atomic_save_npy, atomic_write_json

PACK_DIR = "packs"
PACK_VERSION = 1
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
    id: list[str]
    sha256: np.ndarray
    length: np.ndarray
    offset: np.ndarray
    frame: np.ndarray
    count: np.ndarray
    reason: list[str]

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
        return i if i < len(self.id) and int(self.offset[i]) == offset else None


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


def scan_records(root: Path) -> dict[str, tuple[int, int]]:
    """``{record file name: (size, mtime_ns)}`` of the committed packs (one directory scan, one stat per pack)."""
    try:
        entries = list(os.scandir(root / PACK_DIR))
    except FileNotFoundError:
        return {}
    out = {}
    for e in entries:
        if e.name.endswith(".json") and not e.name.startswith(TMP_PREFIX):
            st = e.stat()
            out[e.name] = (st.st_size, st.st_mtime_ns)
    return out


@dataclass(frozen=True)
class Match:
    """Corpus clips matched against pack records.

    Attributes:
        state: (N,) int8: 1 labelled, -1 recorded as rejected by labelling, 0 no valid entry (unlabelled).
        pack: (N,) int64 index into ``records`` (-1 where ``state`` is 0).
        entry: (N,) int64 entry of that record (-1 where ``state`` is 0).
        records: the records matched against.
    """

    state: np.ndarray
    pack: np.ndarray
    entry: np.ndarray
    records: list[PackRecord]

    def reason(self, i: int) -> str:
        """Why clip ``i`` (``state[i] == -1``) was rejected when its pack was labelled."""
        return self.records[int(self.pack[i])].reason[int(self.entry[i])]


def match(records: list[PackRecord], cols: ClipColumns) -> Match:
    """Match every clip of ``cols`` with the entry at its shard and offset, valid only if (sha256, length) agree.

    Vectorised: a sort of the entries and one ``searchsorted`` of the clips; no per-clip Python work.
    """
    index = {s: i for i, s in enumerate(cols.shard_names)}
    recs = [r for r in records if r.shard in index and len(r.id)]
    n = len(cols)
    none = np.full(n, -1, np.int64)
    if not recs or not n:
        return Match(np.zeros(n, np.int8), none, none.copy(), recs)
    sizes = np.array([len(r.id) for r in recs], np.int64)
    shard = np.repeat(np.array([index[r.shard] for r in recs], np.int64), sizes)
    key = (shard << _KEY_SHIFT) | np.concatenate([r.offset for r in recs])
    order = np.argsort(key, kind="stable")
    want = cols.keys()
    pos = np.minimum(np.searchsorted(key[order], want), key.shape[0] - 1)
    j = order[pos]  # (N,) candidate entry, in concatenated numbering
    sha, length = np.concatenate([r.sha256 for r in recs]), np.concatenate([r.length for r in recs])
    ok = (key[j] == want) & (sha[j] == cols.sha256) & (length[j] == cols.length)
    present = np.concatenate([r.frame for r in recs]) >= 0
    state = np.where(ok, np.where(present[j], 1, -1), 0).astype(np.int8)
    pack = np.repeat(np.arange(len(recs)), sizes)
    entry = np.arange(key.shape[0]) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return Match(state, np.where(ok, pack[j], -1), np.where(ok, entry[j], -1), recs)


def first_of_each(cols: ClipColumns, rows: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` that hold the first occurrence of their (sha256, length), in row order.

    Sorted by (first 64 bits of the hash, length), stably; exact: a 64-bit prefix shared by two different
    hashes (about 3e-8 for 10^6 files) falls back to sorting the full hashes.
    """
    if rows.shape[0] < 2:
        return rows
    sha, length, prefix = cols.sha256[rows], cols.length[rows], _prefix64(cols.sha256[rows])
    order = np.lexsort((length, prefix))  # stable: the first row of each key comes first
    s, n, p = sha[order], length[order], prefix[order]
    same = (p[1:] == p[:-1]) & (n[1:] == n[:-1])
    if np.any(s[1:][same] != s[:-1][same]):
        keys = np.empty(rows.shape[0], [("sha", "S64"), ("length", np.int64)])
        keys["sha"], keys["length"] = sha, length
        _, first = np.unique(keys, return_index=True)
        return rows[np.sort(first)]
    return rows[np.sort(order[np.r_[True, ~same]])]


_NIBBLE = np.zeros(256, np.uint64)
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint64)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint64)


def _prefix64(sha: np.ndarray) -> np.ndarray:
    """(N,) uint64: the first 16 hex digits of (N,) ``S64`` hashes."""
    digits = np.frombuffer(np.ascontiguousarray(sha, "S64").tobytes(), np.uint8).reshape(-1, 64)[:, :16]
    return (_NIBBLE[digits] << (np.uint64(4) * np.arange(15, -1, -1, dtype=np.uint64))).sum(axis=1, dtype=np.uint64)


def frame_index(record: PackRecord, entries: np.ndarray) -> np.ndarray:
    """(F',) int64 pack frames of ``entries`` (indices into ``record``), concatenated."""
    starts, counts = record.frame[entries], record.count[entries]
    base = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return base + np.arange(int(counts.sum()))


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
