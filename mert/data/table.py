"""The corpus's clip table: ``manifest.csv`` as numpy columns, memory-mapped, shared by every reader.

``manifest.csv`` stays the human-readable source of truth; beside it, ``table/`` holds one ``.npy`` per column
(fixed-width bytes for the hashes, ``int64`` for positions, the source paths as one byte blob plus offsets) and
``table/table.json``, written last, with the row count and the manifest's size, mtime and SHA-256 it was built
from. Opening a corpus of 10^6 clips then costs a stat and a few ``np.load(mmap_mode="r")`` calls instead of
parsing 10^6 CSV rows into Python objects; loader processes share the mapped pages through the page cache, so a
worker holds no per-clip Python object (a :class:`mert.data.shards.Clip` is made on demand for the rows it reads).

A table whose manifest no longer matches (a manifest edited by hand or written by an older version) is rebuilt in
memory from the CSV (pyarrow's reader); readers never write into the corpus (it may be a DVC output, read-only or
shared by many ranks): ``mert ingest`` (even an unchanged re-run) writes the table and the shard cache.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mert.utils.io import atomic_save_npy, atomic_write_json, sha256_file

TABLE_DIR = "table"
TABLE_META = "table.json"
TABLE_VERSION = 1

INT_COLUMNS = ("shard", "offset", "length", "orig_sr", "channels", "size", "mtime_ns")
"""Integer columns (``shard`` is an index into ``shard_names``); ``size``/``mtime_ns`` are the source file's stat
at ingestion (-1 when unknown: corpora written before they were recorded)."""
BYTES_COLUMNS = {"id": 16, "sha256": 64}
"""Fixed-width ASCII columns and their widths."""


class TableError(RuntimeError):
    """The clip table cannot be built from the manifest (a malformed row)."""


def manifest_stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


class ClipTable:
    """Columns of the manifest, in manifest order (sorted by shard, then offset).

    Attributes:
        n: rows.
        shard_names: (S,) the shard file names; ``shard`` indexes it.
        shard, offset, length, orig_sr, channels, size, mtime_ns: (n,) int64 columns.
        id: (n,) ``S16``; sha256: (n,) ``S64``; duration_s: (n,) float64.
        format_names: the distinct formats; ``format`` (n,) int16 indexes it.
        manifest: ``{"size", "mtime_ns", "sha256"}`` of the manifest the table was built from.
    """

    def __init__(self, columns: dict[str, np.ndarray], shard_names: list[str], format_names: list[str],
                 source_blob: np.ndarray, source_ends: np.ndarray, manifest: dict[str, Any]):  # fmt: skip
        self.columns, self.shard_names, self.format_names = columns, shard_names, format_names
        self._blob, self._ends = source_blob, source_ends  # (bytes,) uint8, (n,) int64 end offsets
        self.manifest = manifest
        self.n = int(source_ends.shape[0])
        for k, v in columns.items():
            setattr(self, k, v)

    def __len__(self) -> int:
        return self.n

    def source(self, i: int) -> str:
        a = int(self._ends[i - 1]) if i > 0 else 0
        return bytes(self._blob[a : int(self._ends[i])]).decode("utf-8")

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as the manifest's fields (the :class:`mert.data.shards.Clip` constructor's keywords)."""
        c = self.columns
        return {
            "id": c["id"][i].decode(), "source": self.source(i), "sha256": c["sha256"][i].decode(),
            "duration_s": float(c["duration_s"][i]), "orig_sr": int(c["orig_sr"][i]),
            "channels": int(c["channels"][i]), "format": self.format_names[int(c["format"][i])],
            "shard": self.shard_names[int(c["shard"][i])], "offset": int(c["offset"][i]),
            "length": int(c["length"][i]), "size": int(c["size"][i]), "mtime_ns": int(c["mtime_ns"][i]),
        }  # fmt: skip

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_rows(cls, rows: Sequence[Any], manifest: dict[str, Any]) -> ClipTable:
        """From objects with the manifest's fields as attributes (``Clip``), already in manifest order."""
        get = lambda k: [getattr(r, k) for r in rows]
        return cls._build({k: get(k) for k in _FIELDS}, manifest)

    @classmethod
    def from_csv(cls, path: Path) -> ClipTable:
        """Parse ``manifest.csv`` with pyarrow's CSV reader straight into columns (~1-2 s per 10^6 rows here; the
        source paths become the blob without a Python string per row).

        Raises:
            TableError: a missing column or a malformed value (pyarrow's message names the column and row).
        """
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        size, mtime = manifest_stat(path)
        manifest = {"size": size, "mtime_ns": mtime, "sha256": sha256_file(path)}
        with open(path, encoding="utf-8") as f:
            header = f.readline().strip().split(",")
        if header == [""]:
            return cls._build({k: [] for k in _FIELDS}, manifest)
        missing = [k for k in _FIELDS if k not in header and k not in ("size", "mtime_ns")]
        if missing:
            raise TableError(f"{path}: missing columns {missing}")
        types = {k: pa.string() for k in ("source", "format", "shard")} | {k: pa.binary() for k in BYTES_COLUMNS}
        types |= {k: pa.int64() for k in INT_COLUMNS[1:] if k in header} | {"duration_s": pa.float64()}
        opts = pacsv.ConvertOptions(column_types=types, include_columns=[k for k in _FIELDS if k in header],
                                    strings_can_be_null=False, quoted_strings_can_be_null=False)  # fmt: skip
        try:
            t = pacsv.read_csv(path, convert_options=opts)
        except (pa.ArrowInvalid, ValueError) as e:
            raise TableError(f"{path}: malformed row: {e}") from e
        n = t.num_rows
        cols: dict[str, np.ndarray] = {}
        for k in INT_COLUMNS[1:]:
            cols[k] = _ints(t[k], path, k) if k in header else np.full(n, -1, np.int64)
        cols["duration_s"] = _ints(t["duration_s"], path, "duration_s", np.float64)
        for k, w in BYTES_COLUMNS.items():
            cols[k] = _fixed(t[k].combine_chunks(), w, path, k)
        shard_names, cols["shard"] = _categories(t["shard"], pc)
        format_names, fmt = _categories(t["format"], pc)
        cols["format"] = fmt.astype(np.int16)
        src = t["source"].combine_chunks().cast(pa.large_string())
        offsets = np.frombuffer(src.buffers()[1], np.int64)[src.offset : src.offset + n + 1]
        blob = np.frombuffer(src.buffers()[2], np.uint8)[offsets[0] : offsets[-1]] if n else np.zeros(0, np.uint8)
        return cls(cols, shard_names, format_names, blob.copy(), (offsets[1:] - offsets[0]).copy(), manifest)

    @classmethod
    def _build(cls, data: dict[str, Any], manifest: dict[str, Any], where: str = "manifest") -> ClipTable:
        n = len(data["id"])
        cols: dict[str, np.ndarray] = {}
        try:
            for k in INT_COLUMNS[1:]:
                cols[k] = np.asarray(data[k], dtype=np.int64).reshape(n)
            cols["duration_s"] = np.asarray(data["duration_s"], dtype=np.float64).reshape(n)
            for k, w in BYTES_COLUMNS.items():
                cols[k] = np.asarray(data[k], dtype=f"S{w}").reshape(n)
        except (ValueError, TypeError, UnicodeEncodeError) as e:
            raise TableError(f"{where}: malformed row: {e}") from e
        for k, w in BYTES_COLUMNS.items():
            short = np.char.str_len(cols[k]) != w
            if short.any():
                i = int(np.flatnonzero(short)[0])
                raise TableError(f"{where}: row {i}: {k} {cols[k][i]!r} is not {w} hex digits")
        shard_names, cols["shard"] = np.unique(np.asarray(data["shard"], dtype=str), return_inverse=True)
        format_names, fmt = np.unique(np.asarray(data["format"], dtype=str), return_inverse=True)
        cols["shard"], cols["format"] = cols["shard"].astype(np.int64), fmt.astype(np.int16)
        src = [s.encode("utf-8") for s in data["source"]]
        blob = np.frombuffer(b"".join(src), dtype=np.uint8) if src else np.zeros(0, np.uint8)
        ends = np.cumsum(np.fromiter((len(s) for s in src), dtype=np.int64, count=n))
        return cls(cols, [str(s) for s in shard_names], [str(f) for f in format_names], blob, ends, manifest)

    def sources(self, rows: np.ndarray | None = None) -> list[str]:
        """The source paths of ``rows`` (default all), decoded from the blob in one pass."""
        ends = np.asarray(self._ends)
        starts = np.concatenate([[0], ends[:-1]]) if self.n else ends
        blob = np.asarray(self._blob).tobytes()
        rows = range(self.n) if rows is None else rows
        return [blob[int(starts[i]) : int(ends[i])].decode("utf-8") for i in rows]

    def select(self, rows: np.ndarray, new: Sequence[Any] = (), restat: dict[int, tuple[int, int]] | None = None,
               ) -> ClipTable:  # fmt: skip
        """A new table: ``rows`` of this one (their ``size``/``mtime_ns`` replaced by ``restat[row]``), then the
        objects ``new`` (``Clip``-like), sorted into manifest order (shard name, offset). Column-wise: no per-row
        object for the kept rows.
        """
        rows = np.asarray(rows, dtype=np.int64)
        data: dict[str, Any] = {}
        for k in _FIELDS:
            if k == "source":
                old = self.sources(rows)
            elif k == "shard":
                old = np.asarray(self.shard_names, dtype=object)[np.asarray(self.columns["shard"])[rows]]
            elif k == "format":
                old = np.asarray(self.format_names, dtype=object)[np.asarray(self.columns["format"])[rows]]
            else:
                old = np.asarray(self.columns[k])[rows].copy()
            data[k] = np.concatenate([np.asarray(old, dtype=object), np.asarray([getattr(c, k) for c in new], object)])
        for r, (size, mtime) in (restat or {}).items():
            j = int(np.searchsorted(rows, r))
            data["size"][j], data["mtime_ns"][j] = size, mtime
        order = np.lexsort((data["offset"].astype(np.int64), data["shard"].astype(str)))
        return ClipTable._build({k: v[order] for k, v in data.items()}, {})

    # ------------------------------------------------------------------------------------------ disk
    def save(self, root: Path) -> None:
        """Write the columns under ``root/table/``, ``table.json`` last (a reader trusts only a complete table)."""
        d = root / TABLE_DIR
        with contextlib.suppress(FileNotFoundError):
            (d / TABLE_META).unlink()  # the old table is invalid from the first column written
        for k, v in self.columns.items():
            atomic_save_npy(d / f"{k}.npy", np.ascontiguousarray(v))
        atomic_save_npy(d / "source_blob.npy", np.ascontiguousarray(self._blob))
        atomic_save_npy(d / "source_ends.npy", np.ascontiguousarray(self._ends))
        meta = {"version": TABLE_VERSION, "rows": self.n, "manifest": self.manifest,
                "shard_names": self.shard_names, "format_names": self.format_names}  # fmt: skip
        atomic_write_json(d / TABLE_META, meta)

    @classmethod
    def load(cls, root: Path) -> ClipTable | None:
        """The table under ``root/table/`` if it is complete and matches ``root/manifest.csv`` (its size and mtime,
        or, when those differ as after a copy or a DVC checkout, its SHA-256), else None.
        """
        d = root / TABLE_DIR
        try:
            meta = json.loads((d / TABLE_META).read_text())
            now = manifest_stat(root / "manifest.csv")
        except (OSError, ValueError):
            return None
        m = meta.get("manifest", {})
        if meta.get("version") != TABLE_VERSION:
            return None
        if [m.get("size"), m.get("mtime_ns")] != now and sha256_file(root / "manifest.csv") != m.get("sha256"):
            return None  # the stat differs (a copy, a DVC checkout) and so does the content
        try:
            cols = {k: np.load(d / f"{k}.npy", mmap_mode="r") for k in _COLUMN_FILES}
            blob = np.load(d / "source_blob.npy", mmap_mode="r")
            ends = np.load(d / "source_ends.npy", mmap_mode="r")
        except (OSError, ValueError):
            return None
        if any(v.shape != (meta["rows"],) for v in cols.values()) or ends.shape != (meta["rows"],):
            return None
        return cls(cols, meta["shard_names"], meta["format_names"], blob, ends, m)


def _ints(col, path: Path, name: str, dtype=np.int64) -> np.ndarray:
    if col.null_count:
        raise TableError(f"{path}: malformed row: empty {name} value")
    return col.to_numpy().astype(dtype, copy=False)


def _fixed(col, width: int, path: Path, name: str) -> np.ndarray:
    """A pyarrow binary column of ``width``-byte values as a numpy ``S<width>`` array (one copy)."""
    import pyarrow.compute as pc

    lengths = pc.binary_length(col).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        raise TableError(f"{path}: row {int(bad[0])}: {name} {col[int(bad[0])].as_py()!r} is not {width} hex digits")
    import pyarrow as pa

    fixed = col.cast(pa.binary(width))
    return np.frombuffer(fixed.buffers()[1], dtype=f"S{width}")[fixed.offset : fixed.offset + len(fixed)].copy()


def _categories(col, pc) -> tuple[list[str], np.ndarray]:
    """``(sorted distinct values, (n,) int64 index of each row's value)`` of a pyarrow string column."""
    names = sorted(pc.unique(col).to_pylist())
    import pyarrow as pa

    index = pc.index_in(col, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False)
    return names, np.asarray(index, dtype=np.int64)


_FIELDS = ("id", "source", "sha256", "duration_s", "orig_sr", "channels", "format", "shard", "offset", "length",
           "size", "mtime_ns")  # fmt: skip
_COLUMN_FILES = (*INT_COLUMNS, *BYTES_COLUMNS, "duration_s", "format")


def open_table(root: Path, write: bool = False) -> ClipTable:
    """The corpus's table: the saved one if current, else built from ``manifest.csv`` (and saved if ``write``).

    Readers pass ``write=False``: a reader never writes into a corpus directory (it may be a DVC output, read-only,
    or shared by many ranks); ingestion writes the table.
    """
    table = ClipTable.load(root)
    if table is not None:
        return table
    path = root / "manifest.csv"
    if not path.exists():
        return ClipTable._build({k: [] for k in _FIELDS}, {"size": -1, "mtime_ns": -1, "sha256": ""})
    table = ClipTable.from_csv(path)
    if write and os.access(root, os.W_OK):
        with contextlib.suppress(OSError):
            table.save(root)
            return ClipTable.load(root) or table
    return table


class ClipList(Sequence):
    """A read-only sequence of :class:`mert.data.shards.Clip` over rows of a :class:`ClipTable` (all, or ``rows``).

    Clips are made on access (a few microseconds each), so a list over 10^6 rows holds no per-clip object.
    Slicing and :meth:`subset` give another ``ClipList``.
    """

    def __init__(self, table: ClipTable, make, rows: np.ndarray | None = None):
        self.table, self._make = table, make
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    @property
    def rows(self) -> np.ndarray:
        """(n,) int64 table rows of these clips."""
        if self._rows is None:
            self._rows = np.arange(self.table.n, dtype=np.int64)
        return self._rows

    def __len__(self) -> int:
        return self.table.n if self._rows is None else int(self._rows.shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(self.rows[i])
        if self._rows is None:
            if not -self.table.n <= i < self.table.n:
                raise IndexError(f"clip {i} out of range ({self.table.n} clips)")
            return self._make(self.table.row(int(i) % self.table.n))
        return self._make(self.table.row(int(self._rows[i])))

    def __iter__(self) -> Iterator:
        for r in range(self.table.n) if self._rows is None else self._rows:
            yield self._make(self.table.row(int(r)))

    def subset(self, rows: np.ndarray) -> ClipList:
        """The clips of table ``rows`` (absolute row numbers)."""
        return ClipList(self.table, self._make, rows)

    def ids(self) -> list[str]:
        """The clip ids of these rows as ``str`` (one join and split: ~0.1 s per 10^6 clips)."""
        col = self.column("id")
        return b"\n".join(col.tolist()).decode("ascii").split("\n") if len(col) else []

    def column(self, name: str) -> np.ndarray:
        """Column ``name`` of these rows."""
        col = np.asarray(self.table.columns[name])
        return col if self._rows is None else col[self._rows]

    def __eq__(self, other) -> bool:
        if isinstance(other, ClipList):
            return self.table is other.table and np.array_equal(self.rows, other.rows)
        return isinstance(other, list) and list(self) == other

    __hash__ = None
