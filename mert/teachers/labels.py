"""The label store: one uint16 ``.npy`` per clip, keyed by audio content hash x teacher identity.

Layout::

    <labels_dir>/<teacher_key>/            teacher_key = <teacher name>-<identity hash[:12]>
        teacher.json                       the teacher identity (name, config, weights hash, hash)
        clips/<sha[:2]>/<sha>-<length>.npy     (n_codebooks, student_frames(length)) uint16
        clips/<sha[:2]>/<sha>-<length>.json    {clip_id, sha256, length, sample_rate, frames, n_codebooks, teacher}
        label_rejects.csv                  clips the last run could not label (per range when sharded)
        usage.json                         per-codebook code usage over the corpus's labelled clips (last run)

``sha`` is the clip's source-file SHA-256 from the manifest and ``length`` its sample count at
the corpus rate, so the cache key is (audio content, teacher identity): identical audio is
labelled once, and a changed file or teacher gets new labels. The ``.npy`` is written first and
its ``.json`` record last (both atomically): a clip is labelled iff its record exists, so a killed
run leaves no half-labelled clip and the next run resumes with the clips that have no record.

:meth:`LabelStore.load` checks the record against the clip (hash, length, rate, teacher), the
array against the record (dtype, shape, frame count) and its codes against the codebook sizes
(every code ``< codebook_limits[k]``), and raises :class:`LabelError` naming the file on any
mismatch: mismatched or out-of-range labels are never returned (an out-of-range code would reach
``cross_entropy`` as an opaque device assert).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mert.data.shards import Clip
from mert.teachers.base import crop_slice, student_frames
from mert.utils.io import atomic_save_npy, atomic_write_json

log = logging.getLogger(__name__)

TEACHER_FILE = "teacher.json"
USAGE_FILE = "usage.json"
CLIP_DIR = "clips"
DEFAULT_CODEBOOK_SIZE = 1024
"""Codebook size of a store whose teacher identity names none (EnCodec's, the student's default head)."""


class LabelError(RuntimeError):
    """Labels are missing for a clip or do not match it."""


class UntrainableLabels(LabelError):
    """A label store that cannot teach (a codebook that uses a single code): refused by ``mert label`` and
    ``mert pretrain`` unless accepted with ``mert label --allow-single-code``.
    """


class LabelStore:
    """Read/write access to one teacher's labels.

    Args:
        root: ``<labels_dir>/<teacher_key>`` (see :meth:`create` and :meth:`open`).

    Example::

        store = LabelStore.open("data/labels", "rvq")     # the only rvq* teacher there
        codes = store.crop(clip, start=320 * 100, length=120_000)   # (8, 374) uint16
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / TEACHER_FILE
        if not path.exists():
            raise LabelError(f"{self.root} is not a label store (no {TEACHER_FILE})")
        self.identity: dict[str, Any] = json.loads(path.read_text())
        self.n_codebooks = int(self.identity["config"]["n_codebooks"])
        self._in_range: set[Path] = set()  # label files whose codes were checked against codebook_limits

    @property
    def codebook_size(self) -> int:
        """C of the student's heads: the teacher's ``codebook_size``, else its largest ``n_clusters`` (k-means)."""
        cfg = self.identity.get("config", {})
        clusters = cfg.get("n_clusters")
        return int(cfg.get("codebook_size") or (max(clusters) if clusters else DEFAULT_CODEBOOK_SIZE))

    @property
    def codebook_limits(self) -> list[int]:
        """Per codebook, the number of valid codes (k-means teachers may have a different count per codebook)."""
        clusters = self.identity.get("config", {}).get("n_clusters")
        if clusters and len(clusters) == self.n_codebooks:
            return [int(c) for c in clusters]
        return [self.codebook_size] * self.n_codebooks

    @classmethod
    def create(cls, labels_dir: str | Path, key: str, identity: dict[str, Any]) -> LabelStore:
        """Open the store of teacher ``key`` under ``labels_dir``, writing ``teacher.json`` if new."""
        root = Path(labels_dir) / key
        path = root / TEACHER_FILE
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("hash") != identity["hash"]:
                raise LabelError(f"{path} holds teacher {old.get('hash')}, not {identity['hash']}")
        else:
            atomic_write_json(path, identity)
        return cls(root)

    @classmethod
    def open(cls, labels_dir: str | Path, name: str | None = None) -> LabelStore:
        """The one store under ``labels_dir`` whose key starts with ``name`` (any name if None)."""
        roots = sorted(p.parent for p in Path(labels_dir).glob(f"*/{TEACHER_FILE}"))
        found = [r for r in roots if name is None or r.name.startswith(name)]
        if len(found) != 1:
            have = ", ".join(r.name for r in roots) or "none"
            raise LabelError(f"{len(found)} label stores match {name!r} under {labels_dir} (have: {have})")
        return cls(found[0])

    @property
    def key(self) -> str:
        return self.root.name

    def _stem(self, clip: Clip) -> Path:
        return self.root / CLIP_DIR / clip.sha256[:2] / f"{clip.sha256}-{clip.length}"

    def has(self, clip: Clip) -> bool:
        """Whether ``clip`` has a committed label record (does not validate it: see :meth:`load`)."""
        return self._stem(clip).with_suffix(".json").exists()

    def write(self, clip: Clip, codes: np.ndarray, sample_rate: int) -> Path:
        """Store ``codes`` (K, student_frames(clip.length)) for ``clip``; array first, record last."""
        frames = student_frames(clip.length)
        if codes.shape != (self.n_codebooks, frames):
            raise LabelError(f"clip {clip.id}: codes {codes.shape} != ({self.n_codebooks}, {frames})")
        if codes.min(initial=0) < 0 or codes.max(initial=0) > np.iinfo(np.uint16).max:
            raise LabelError(f"clip {clip.id}: codes outside the uint16 range")
        stem = self._stem(clip)
        atomic_save_npy(stem.with_suffix(".npy"), codes.astype(np.uint16))
        record = {
            "clip_id": clip.id,
            "sha256": clip.sha256,
            "length": clip.length,
            "sample_rate": sample_rate,
            "frames": frames,
            "n_codebooks": self.n_codebooks,
            "teacher": self.identity["hash"],
        }
        atomic_write_json(stem.with_suffix(".json"), record)
        return stem.with_suffix(".npy")

    def load(self, clip: Clip, sample_rate: int | None = None, mmap: bool = True) -> np.ndarray:
        """Labels of the whole clip, (K, student_frames(clip.length)) uint16, checked against the clip.

        Raises:
            LabelError: no labels, or labels that do not match the clip or this teacher.
        """
        stem = self._stem(clip)
        if not stem.with_suffix(".json").exists():
            raise LabelError(f"no {self.key} labels for clip {clip.id} ({clip.source}, sha {clip.sha256[:12]})")
        rec = json.loads(stem.with_suffix(".json").read_text())
        want = {"sha256": clip.sha256, "length": clip.length, "teacher": self.identity["hash"]}
        if sample_rate is not None:
            want["sample_rate"] = sample_rate
        bad = {k: (rec.get(k), v) for k, v in want.items() if rec.get(k) != v}
        if bad:
            raise LabelError(f"labels {stem}.npy do not match clip {clip.id}: (stored, expected) {bad}")
        try:
            codes = np.load(stem.with_suffix(".npy"), mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise LabelError(f"labels {stem}.npy of clip {clip.id} are unreadable: {e}") from e
        expected = (self.n_codebooks, student_frames(clip.length))
        if codes.dtype != np.uint16 or codes.shape != expected:
            raise LabelError(
                f"labels {stem}.npy of clip {clip.id}: {codes.dtype} {codes.shape}, expected uint16 {expected} "
                f"(clip of {clip.length} samples)"
            )
        if stem not in self._in_range:
            self._check_range(stem.with_suffix(".npy"), clip, codes)
            self._in_range.add(stem)
        return codes

    def _check_range(self, path: Path, clip: Clip, codes: np.ndarray) -> None:
        """Every code of codebook k below ``codebook_limits[k]``, else :class:`LabelError` naming the file."""
        if not codes.size:
            return
        top = codes.max(axis=1)  # (K,)
        bad = [(k, int(t), c) for k, (t, c) in enumerate(zip(top, self.codebook_limits)) if t >= c]
        if bad:
            what = ", ".join(f"codebook {k} has code {t} >= its size {c}" for k, t, c in bad)
            raise LabelError(f"labels {path} of clip {clip.id} ({clip.source}): {what}; a student cannot be trained on "
                             f"codes outside [0, size) (teacher {self.key})")  # fmt: skip

    def crop(self, clip: Clip, start: int, length: int, sample_rate: int | None = None) -> np.ndarray:
        """Labels of the crop ``[start, start + length)`` (start a multiple of 320): (K, student_frames(length))."""
        if start < 0 or start + length > clip.length:
            raise ValueError(f"crop [{start}, {start + length}) outside clip {clip.id} of {clip.length} samples")
        return np.array(self.load(clip, sample_rate)[:, crop_slice(start, length)])

    def usage(self, clips: list[Clip], codebook_size: int) -> dict[str, Any]:
        """Per-codebook code usage (``mert.teachers.usage``) over the clips of ``clips`` labelled in this store.

        Each distinct (content, length) is counted once; labels that fail :meth:`load` are skipped with a warning.

        Returns:
            ``{"teacher", "clips", "frames", "codebook_size", "codebooks": {"0": CodeUsage dict, ...}}``; no
            ``codebooks`` entry when no clip is labelled.
        """
        from mert.teachers.usage import code_usage

        arrays, seen = [], set()
        for clip in clips:
            if (clip.sha256, clip.length) in seen or not self.has(clip):
                continue
            seen.add((clip.sha256, clip.length))
            try:
                arrays.append(self.load(clip))
            except LabelError as e:
                log.warning("code usage: skipping clip %s: %s", clip.id, e)
        out: dict[str, Any] = {"teacher": self.key, "clips": len(arrays), "codebook_size": codebook_size}
        out["frames"] = int(sum(a.shape[1] for a in arrays))
        if arrays:
            out["codebooks"] = {str(u.codebook): u.as_dict() for u in code_usage(arrays, codebook_size)}
        return out

    def write_usage(self, clips: list[Clip], codebook_size: int, single_code_allowed: bool = False) -> dict[str, Any]:
        """:meth:`usage`, also written atomically to ``usage.json`` in the store.

        Args:
            clips: the corpus clips.
            codebook_size: C.
            single_code_allowed: recorded as ``single_code_allowed``: the store was accepted although a codebook
                uses a single code (``mert label --allow-single-code``); ``mert pretrain`` then trains on it.
        """
        usage = self.usage(clips, codebook_size) | {"single_code_allowed": bool(single_code_allowed)}
        atomic_write_json(self.root / USAGE_FILE, usage)
        return usage

    def read_usage(self) -> dict[str, Any] | None:
        """The store's ``usage.json`` (None if absent or unreadable)."""
        try:
            return json.loads((self.root / USAGE_FILE).read_text())
        except (OSError, ValueError):
            return None
