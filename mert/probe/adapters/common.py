"""Helpers shared by the dataset adapters: deterministic splits, file lookup, clear layout errors."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from mert.audio import AUDIO_LIKE
from mert.probe.tasks import TaskError

log = logging.getLogger(__name__)


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`TaskError` saying which part of the native layout is missing."""
    if not path.exists():
        raise TaskError(f"{path}: not found ({what})")
    return path


def hash_split(key: str, valid: float = 0.1, test: float = 0.0, salt: str = "") -> str:
    """A deterministic split from a stable hash of ``key`` (same answer on every machine and run)."""
    u = int(hashlib.sha1((salt + key).encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < test else ("valid" if u < test + valid else "train")


def read_split_lists(directory: Path, pattern: str) -> dict[str, str] | None:
    """``{entry: split}`` from ``pattern.format(split=...)`` list files (one entry per line), or None if absent."""
    out: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        path = directory / pattern.format(split=split)
        if not path.is_file():
            return None
        out |= {line.strip(): split for line in path.read_text().splitlines() if line.strip()}
    return out


def audio_by_stem(directory: Path) -> dict[str, Path]:
    """Audio files under ``directory`` keyed by file name without its last extension."""
    return {p.stem: p for p in sorted(directory.rglob("*")) if p.suffix.lower() in AUDIO_LIKE and p.is_file()}
