"""Atomic writes and content hashes.

Every file the pipeline produces (shards, manifests, labels, checkpoints) goes through
:func:`atomic_write`: the bytes are written to a temporary file in the same directory,
flushed to disk, and renamed over the destination. A killed process therefore leaves
either the old file or the new one, never a half-written file that a reader would accept.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing and rename it into place on success.

    Args:
        path: final destination.
        mode: ``"wb"`` or ``"w"``.

    Yields:
        The open temporary file. If the body raises, the temporary file is removed and
        ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file atomically."""
    with atomic_write(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fieldnames: list[str]) -> None:
    """Write ``rows`` (dicts) as a CSV file with a header, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV file with a header into a list of dicts (empty list if the file is missing)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def remove_stale_tmp(directory: str | os.PathLike) -> int:
    """Delete temporary files left by killed writers in ``directory``; return how many."""
    n = 0
    for p in Path(directory).glob(TMP_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hex SHA-256 of a JSON-serialisable object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(path: str | os.PathLike) -> str:
    """A cheap content fingerprint of a file or directory tree (relative path, size, mtime per file).

    Used as a cache key by orchestration (Prefect); not a security hash. Missing paths give ``"missing"``.
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_file():
        st = path.stat()
        return sha256_json([path.name, st.st_size, st.st_mtime_ns])
    entries = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.name.startswith(TMP_PREFIX):
            st = p.stat()
            entries.append([p.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    return sha256_json(entries)
