"""The label store: a teacher's uint16 labels of a corpus, one pack per audio shard (or one file per clip).

Layout (packed, the default of a new store)::

    <labels_dir>/<teacher_key>/            teacher_key = <teacher name>-<identity hash[:12]>
        teacher.json                       the teacher identity (name, config, weights hash, hash) + "layout"
        packs/shard-NNNNN.npy              (n_codebooks, frames) uint16: the clips of corpus shard NNNNN
        packs/shard-NNNNN.json             its commit record, written last (``mert.teachers.packs``)
        packs/index/records.npz            a cache of every record's columns, checked against each record's stat
        label_rejects.csv                  clips the last run could not label (per range when sharded)
        usage.json                         per-codebook code usage over the corpus's labelled clips (last run)

A pack holds the labels of every clip of one audio shard (``shards/shard-NNNNN.npy`` of the corpus) back to
back in offset order, and is visible only once its record exists (a killed run leaves nothing half-written:
it resumes at the first shard without a record). A clip rejected by labelling (unreadable audio, too short) is
recorded as absent, so its shard's pack can still be committed (delete the record to retry the shard). An entry
is valid for a clip only if it sits at the clip's (shard, offset) and its (sha256, length) match: **packed
labels are tied to the corpus's shard layout**, so re-ingesting a corpus into other shards relabels it.

Per-clip layout (stores written before packs; ``teacher.json`` has no ``"layout"``)::

        clips/<sha[:2]>/<sha>-<length>.npy     (n_codebooks, student_frames(length)) uint16
        clips/<sha[:2]>/<sha>-<length>.json    {clip_id, sha256, length, sample_rate, frames, n_codebooks, teacher}

keyed by content (the source file's SHA-256 and the sample count), hence valid across shard layouts. Such a
store stays readable, and ``mert label`` keeps writing it in its own layout (nothing is relabelled; new label
directories are packed). The array is written first and its record last (both atomically).

:meth:`LabelStore.load` checks the record against the clip (hash, length, rate, teacher), the array against
the record (dtype, shape, frame count) and its codes against the codebook sizes (every code
``< codebook_limits[k]``, once per file), and raises :class:`LabelError` naming the file on any mismatch:
mismatched or out-of-range labels are never returned (an out-of-range code would reach ``cross_entropy`` as an
opaque device assert). Readers keep at most ``packs.MAX_OPEN_PACKS`` memory maps open; bulk questions
(:meth:`LabelStore.match`, :meth:`LabelStore.usage`) take the records as columns (:meth:`LabelStore.pack_table`):
from the record index for every record whose stat it matches, reading only the changed and new records (never
one file per clip); a labelling run (a store from :meth:`LabelStore.create`) rewrites the index when it was out of
date, readers never write into the store (it may be a DVC output or shared by many ranks). The records are the
truth, the index only a cache: concurrent writers stay correct and a read-only store still opens (it reads what
the index misses).
Per-clip lookups after a bulk question take their record from that table (ids and reasons read lazily).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mert.data.shards import Clip
from mert.teachers import packs as P
from mert.teachers.base import crop_slice, student_frames
from mert.utils.io import atomic_save_npy, atomic_write_json

log = logging.getLogger(__name__)

TEACHER_FILE = "teacher.json"
USAGE_FILE = "usage.json"
CLIP_DIR = "clips"
PACK_DIR = P.PACK_DIR
PACKED, PER_CLIP = "packed", "per-clip"
LAYOUTS = (PACKED, PER_CLIP)
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

    Attributes:
        layout: ``"packed"`` or ``"per-clip"`` (from ``teacher.json``; absent: per-clip).
        identity: the teacher identity (``teacher.json`` without ``layout``).

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
        self.layout = self.identity.pop("layout", PER_CLIP)
        if self.layout not in LAYOUTS:
            raise LabelError(f"{path}: unknown label layout {self.layout!r} (this version reads {', '.join(LAYOUTS)})")
        self.n_codebooks = int(self.identity["config"]["n_codebooks"])
        self._in_range: set[Path] = set()  # label files whose codes were checked against codebook_limits
        self._records: dict[str, P.PackRecord] = {}  # by audio shard name: committed packs seen by this process
        self._table: P.RecordTable | None = None  # every committed record, as of the last pack_table()
        self.index_writer = False  # rewrite packs/index/ when stale: writers only (create); readers never write
        self._maps = P.PackMaps()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a loader process: no memory map (it would carry its file) and no record cache travels."""
        return {**self.__dict__, "_records": {}, "_table": None, "_maps": P.PackMaps(self._maps.size)}

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
    def create(cls, labels_dir: str | Path, key: str, identity: dict[str, Any], layout: str = PACKED) -> LabelStore:
        """Open the store of teacher ``key`` under ``labels_dir``, writing ``teacher.json`` if new.

        Args:
            labels_dir: the labels directory.
            key: the teacher key (the store's directory name).
            identity: the teacher identity (``TargetExtractor.identity()``).
            layout: of a new store; an existing store keeps the layout it was written in.

        Raises:
            LabelError: the directory holds another teacher, or ``layout`` is unknown.
        """
        if layout not in LAYOUTS:
            raise LabelError(f"unknown label layout {layout!r} (one of {', '.join(LAYOUTS)})")
        root = Path(labels_dir) / key
        path = root / TEACHER_FILE
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("hash") != identity["hash"]:
                raise LabelError(f"{path} holds teacher {old.get('hash')}, not {identity['hash']}")
        else:
            atomic_write_json(path, {**identity, "layout": layout})
        store = cls(root)
        store.index_writer = True  # a labelling run: it keeps the record index current for the readers
        return store

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

    @property
    def packed(self) -> bool:
        return self.layout == PACKED

    def tmp_dirs(self) -> list[Path]:
        """Directories in which a killed writer may have left temporary files."""
        if self.packed:
            return [self.root / PACK_DIR]
        return sorted((self.root / CLIP_DIR).glob("*"))

    # ------------------------------------------------------------------------------------------ one clip
    def _stem(self, clip: Clip) -> Path:
        return self.root / CLIP_DIR / clip.sha256[:2] / f"{clip.sha256}-{clip.length}"

    def _record(self, shard: str) -> P.PackRecord | None:
        """The committed record of ``shard``'s pack (cached once seen; an absent one is looked up again).

        From the last :meth:`pack_table` if it has the shard (a view, no file read), else from its file.
        """
        rec = self._records.get(shard)
        p = None if rec is not None or self._table is None else self._table.pack_of(shard)
        if p is not None:
            rec = self._records[shard] = self._table.record(p)
        if rec is None:
            try:
                rec = P.read_record(P.pack_paths(self.root, shard)[1])
            except P.PackError as e:
                raise LabelError(str(e)) from e
            if rec is not None:
                self._records[shard] = rec
        return rec

    def _entry(self, clip: Clip) -> tuple[P.PackRecord | None, int | None]:
        """The record of ``clip``'s shard and the index of the entry valid for ``clip`` (None: no such entry)."""
        rec = self._record(clip.shard)
        i = None if rec is None else rec.find(clip.offset)
        if i is not None and (rec.sha256[i] != clip.sha256.encode() or int(rec.length[i]) != clip.length):
            i = None
        return rec, i

    def has(self, clip: Clip) -> bool:
        """Whether ``clip`` has committed labels (does not validate them: see :meth:`load`)."""
        if not self.packed:
            return self._stem(clip).with_suffix(".json").exists()
        rec, i = self._entry(clip)
        return i is not None and int(rec.frame[i]) >= 0

    def write(self, clip: Clip, codes: np.ndarray, sample_rate: int) -> Path:
        """Store ``codes`` (K, student_frames(clip.length)) for ``clip`` in a per-clip store; array first.

        Raises:
            LabelError: wrong shape or codes outside uint16; or a packed store (use :meth:`write_shard`).
        """
        if self.packed:
            raise LabelError(f"label store {self.root} is packed: write the clips of an audio shard together with "
                             "write_shard(), or create the store with layout='per-clip'")  # fmt: skip
        self._check_codes(clip, codes)
        stem = self._stem(clip)
        atomic_save_npy(stem.with_suffix(".npy"), codes.astype(np.uint16))
        record = {
            "clip_id": clip.id,
            "sha256": clip.sha256,
            "length": clip.length,
            "sample_rate": sample_rate,
            "frames": student_frames(clip.length),
            "n_codebooks": self.n_codebooks,
            "teacher": self.identity["hash"],
        }
        atomic_write_json(stem.with_suffix(".json"), record)
        return stem.with_suffix(".npy")

    def _check_codes(self, clip: Clip, codes: np.ndarray) -> None:
        frames = student_frames(clip.length)
        if codes.shape != (self.n_codebooks, frames):
            raise LabelError(f"clip {clip.id}: codes {codes.shape} != ({self.n_codebooks}, {frames})")
        if codes.min(initial=0) < 0 or codes.max(initial=0) > np.iinfo(np.uint16).max:
            raise LabelError(f"clip {clip.id}: codes outside the uint16 range")

    def write_shard(
        self, shard: str, clips: Sequence[Clip], codes: Sequence[np.ndarray | None], reasons: Sequence[str],
        sample_rate: int,
    ) -> Path | None:  # fmt: skip
        """Commit the labels of the clips of audio shard ``shard`` (packed: one pack; per-clip: one file each).

        Args:
            shard: the audio shard's file name (every clip's ``.shard``).
            clips: every clip of that shard in the corpus (packed), or the ones to write (per-clip).
            codes: per clip, (K, student_frames(length)) codes, or None for a clip rejected by labelling.
            reasons: per clip, why it was rejected ("" for labelled clips).
            sample_rate: the corpus rate.

        Returns:
            The pack's record path (packed), else None.

        Raises:
            LabelError: codes of the wrong shape or outside uint16, or a clip of another shard.
        """
        if not self.packed:
            for clip, c in zip(clips, codes):
                if c is not None:
                    self.write(clip, c, sample_rate)
            return None
        order = sorted(range(len(clips)), key=lambda j: clips[j].offset)
        rec, parts = self._pack_record(shard, [clips[j] for j in order], [codes[j] for j in order], sample_rate)
        rec.reason = [reasons[j] if codes[j] is None else "" for j in order]
        k = self.n_codebooks
        path = P.write_pack(self.root, rec, np.concatenate(parts, axis=1) if parts else np.zeros((k, 0), np.uint16))
        self._records[shard] = rec
        npy = P.pack_paths(self.root, shard)[0]
        self._maps.drop(npy)
        self._in_range.discard(npy)
        return path

    def _pack_record(self, shard, clips, codes, sample_rate) -> tuple[P.PackRecord, list[np.ndarray]]:
        frame, count, parts, at = [], [], [], 0
        for clip, c in zip(clips, codes):
            if clip.shard != shard:
                raise LabelError(f"clip {clip.id} is in shard {clip.shard}, not {shard}")
            if c is None:
                frame.append(-1), count.append(0)
                continue
            self._check_codes(clip, c)
            frame.append(at), count.append(c.shape[1])
            parts.append(c.astype(np.uint16))
            at += c.shape[1]
        i64 = lambda v: np.array(v, np.int64)  # noqa: E731
        rec = P.PackRecord(shard, self.identity["hash"], sample_rate, self.n_codebooks, at, [c.id for c in clips],
                           np.array([c.sha256 for c in clips], "S64"), i64([c.length for c in clips]),
                           i64([c.offset for c in clips]), i64(frame), i64(count), [])  # fmt: skip
        return rec, parts

    def load(self, clip: Clip, sample_rate: int | None = None, mmap: bool = True) -> np.ndarray:
        """Labels of the whole clip, (K, student_frames(clip.length)) uint16, checked against the clip.

        Args:
            clip: the clip.
            sample_rate: the corpus rate, checked against the one the labels were made at (None: not checked).
            mmap: a view of the memory-mapped file (else a copy).

        Raises:
            LabelError: no labels, or labels that do not match the clip or this teacher (naming the file).
        """
        if self.packed:
            return self._load_packed(clip, sample_rate, mmap)
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
            self._check_range(stem.with_suffix(".npy"), codes, lambda f: f"{clip.id} ({clip.source})")
            self._in_range.add(stem)
        return codes

    def _load_packed(self, clip: Clip, sample_rate: int | None, mmap: bool) -> np.ndarray:
        npy, path = P.pack_paths(self.root, clip.shard)
        what = f"{self.key} labels for clip {clip.id} ({clip.source}, sha {clip.sha256[:12]})"
        rec, i = self._entry(clip)
        if rec is None:
            raise LabelError(f"no {what}: no committed pack {path}")
        if i is None:
            raise LabelError(f"no {what}: pack {path} has no entry for it (offset {clip.offset}, {clip.length} "
                             "samples); labels are valid for the shard layout they were made for")  # fmt: skip
        if int(rec.frame[i]) < 0:
            raise LabelError(f"no {what}: rejected when labelled ({self._full(rec).reason[i]}), recorded in {path}")
        frames = student_frames(clip.length)
        want = {"teacher": self.identity["hash"], "n_codebooks": self.n_codebooks, "frames": frames}
        if sample_rate is not None:
            want["sample_rate"] = sample_rate
        have = {"teacher": rec.teacher, "n_codebooks": rec.n_codebooks, "frames": int(rec.count[i]),
                "sample_rate": rec.sample_rate}  # fmt: skip
        bad = {k: (have[k], v) for k, v in want.items() if have[k] != v}
        if bad:
            raise LabelError(f"labels {npy} do not match clip {clip.id}: (stored, expected) {bad}")
        codes = self._pack_array(npy, rec, lambda: clip.id)
        a = int(rec.frame[i])
        out = codes[:, a : a + int(rec.count[i])]
        return out if mmap else np.array(out)

    def _pack_array(self, npy: Path, rec: P.PackRecord, who) -> np.ndarray:
        """The memory-mapped pack ``npy``, checked against its record (shape, dtype) and, once, its code range.

        Args:
            npy: the pack.
            rec: its record.
            who: () -> the clip named in errors.
        """
        try:
            arr = self._maps.get(npy)
        except (OSError, ValueError) as e:
            raise LabelError(f"labels {npy} of clip {who()} are unreadable: {e}") from e
        expected = (self.n_codebooks, rec.frames)
        if arr.dtype != np.uint16 or arr.shape != expected:
            self._maps.drop(npy)
            raise LabelError(f"labels {npy} of clip {who()}: {arr.dtype} {arr.shape}, expected uint16 {expected} "
                             f"(the {len(rec.offset)} clips its record lists)")  # fmt: skip
        if npy not in self._in_range:
            self._check_range(npy, arr, lambda f: _clip_at(self._full(rec), f))
            self._in_range.add(npy)
        return arr

    def _check_range(self, path: Path, codes: np.ndarray, clip_at) -> None:
        """Every code of codebook k below ``codebook_limits[k]``, else :class:`LabelError` naming the file.

        Args:
            path: the file (named in the error).
            codes: (K, F) its codes.
            clip_at: frame -> the clip holding it, as named in the error.
        """
        if not codes.size:
            return
        top = codes.max(axis=1)  # (K,)
        bad = [(k, int(t), c) for k, (t, c) in enumerate(zip(top, self.codebook_limits)) if t >= c]
        if bad:
            k0, _, c0 = bad[0]
            who = clip_at(int(np.argmax(codes[k0] >= c0)))
            what = ", ".join(f"codebook {k} has code {t} >= its size {c}" for k, t, c in bad)
            raise LabelError(f"labels {path} of clip {who}: {what}; a student cannot be trained on "
                             f"codes outside [0, size) (teacher {self.key})")  # fmt: skip

    def crop(self, clip: Clip, start: int, length: int, sample_rate: int | None = None) -> np.ndarray:
        """Labels of the crop ``[start, start + length)`` (start a multiple of 320): (K, student_frames(length))."""
        if start < 0 or start + length > clip.length:
            raise ValueError(f"crop [{start}, {start + length}) outside clip {clip.id} of {clip.length} samples")
        return np.array(self.load(clip, sample_rate)[:, crop_slice(start, length)])

    def _full(self, rec: P.PackRecord) -> P.PackRecord:
        """``rec`` with its clip ids and reasons (a table view's are read from its file; error paths only)."""
        if rec.id is not None:
            return rec
        try:
            full = P.read_record(P.pack_paths(self.root, rec.shard)[1])
        except P.PackError:
            full = None
        if full is None or not np.array_equal(full.offset, rec.offset):
            n = len(rec.offset)
            return dataclasses.replace(rec, id=["?"] * n, reason=["? (record rewritten or deleted since)"] * n)
        return full

    # ------------------------------------------------------------------------------------------ bulk
    def pack_table(self) -> P.RecordTable:
        """Every committed pack record as columns (packed layout), refreshed by one stat per pack.

        Starts from this process's last table, else from the record index; reads only the records whose stat
        changed or that it lacks, and rewrites the index when it was out of date (best effort).

        Raises:
            LabelError: a record is unreadable or malformed (naming it).
        """
        base = self._table or P.read_index(self.root) or P.empty_table(self.root)
        try:
            table, changed = P.refresh(self.root, base, None if base is self._table else P.RACY_NS)
        except P.PackError as e:
            raise LabelError(str(e)) from e
        if changed and self.index_writer:
            P.write_index(self.root, table)
        if table is not self._table:
            self._table, self._records = table, {}  # per-clip lookups: views of the new table
        return table

    def records(self) -> list[P.PackRecord]:
        """The committed pack records (views of :meth:`pack_table`; ``id`` and ``reason`` None).

        Raises:
            LabelError: a record is unreadable or malformed (naming it).
        """
        table = self.pack_table()
        return [table.record(p) for p in range(len(table))]

    def match(self, clips: Any) -> P.Match:
        """Which clips of ``clips`` (a ``Corpus``, ``ClipList`` or Clip sequence) have committed labels, vectorised.

        Packed: the records' columns (:meth:`pack_table`); per-clip: one listing per ``clips/<xx>`` directory.

        Returns:
            A :class:`mert.teachers.packs.Match` in the order of ``clips`` (per-clip stores: ``state`` only).
        """
        cols = clips if isinstance(clips, P.ClipColumns) else P.ClipColumns.of(clips)
        if self.packed:
            return P.match(self.pack_table(), cols)
        names: set[str] = set()
        for d in self.tmp_dirs():
            names.update(e.name for e in os.scandir(d) if e.name.endswith(".json"))
        want = np.char.add(np.char.add(cols.sha256.astype(str), "-"), cols.length.astype(str))
        state = np.isin(np.char.add(want, ".json"), np.array(sorted(names), dtype=str)).astype(np.int8)
        none = np.full(len(cols), -1, np.int64)
        return P.Match(state, none, none.copy(), [])

    def labelled_keys(self, clips: Any) -> int:
        """Distinct (sha256, length) among the clips of ``clips`` that have committed labels."""
        cols = P.ClipColumns.of(clips)
        rows = np.flatnonzero(self.match(cols).state == 1)
        return int(P.first_of_each(cols, rows).shape[0])

    def usage(self, clips: Any, codebook_size: int, strict: bool = False) -> dict[str, Any]:
        """Per-codebook code usage (``mert.teachers.usage``) over the clips of ``clips`` labelled in this store.

        Each distinct (content, length) is counted once. Packed stores are counted a pack at a time (one
        ``bincount`` per codebook over its selected frames).

        Args:
            clips: a ``Corpus``, ``ClipList`` or Clip sequence.
            codebook_size: C.
            strict: raise on labels that fail to load (else skip them with a warning).

        Returns:
            ``{"teacher", "clips", "frames", "codebook_size", "codebooks": {"0": CodeUsage dict, ...}}``; no
            ``codebooks`` entry when no clip is labelled.

        Raises:
            LabelError: with ``strict``, labels that do not load (out-of-range codes included), naming the file.
        """
        from mert.teachers.usage import usage_from_histograms

        cols = P.ClipColumns.of(clips)
        m = self.match(cols)
        rows = P.first_of_each(cols, np.flatnonzero(m.state == 1))
        hist = np.zeros((self.n_codebooks, codebook_size), np.int64)
        count = self._count_packs if self.packed else self._count_clips
        n = count(clips, m, rows, hist, strict)
        out: dict[str, Any] = {"teacher": self.key, "clips": n, "codebook_size": codebook_size}
        out["frames"] = int(hist[0].sum()) if n else 0
        if n:
            out["codebooks"] = {str(u.codebook): u.as_dict() for u in usage_from_histograms(hist)}
        return out

    def _count_packs(self, clips, m: P.Match, rows: np.ndarray, hist: np.ndarray, strict: bool) -> int:
        """Add the codes of ``rows`` (matched in ``m``) into ``hist`` (K, C), a pack at a time; clips counted."""
        n = 0
        by_pack = rows[np.argsort(m.pack[rows], kind="stable")]
        packs, starts = np.unique(m.pack[by_pack], return_index=True)
        bounds = np.append(starts, rows.shape[0])
        for p, a, b in zip(packs, bounds[:-1], bounds[1:]):
            rec, entries = m.table.record(int(p)), m.entry[by_pack[a:b]]
            npy = P.pack_paths(self.root, rec.shard)[0]
            try:
                who = lambda r=rec, f=int(rec.frame[entries[0]]): _clip_at(self._full(r), f)  # noqa: E731
                arr = self._pack_array(npy, rec, who)
                _add_counts(hist, arr if entries.shape[0] == int((rec.frame >= 0).sum()) else
                            arr[:, P.frame_index(rec, entries)])  # fmt: skip
            except LabelError as e:
                if strict:
                    raise
                log.warning("code usage: skipping the %d clips of pack %s: %s", entries.shape[0], npy, e)
                continue
            n += entries.shape[0]
        return n

    def _count_clips(self, clips, m: P.Match, rows: np.ndarray, hist: np.ndarray, strict: bool) -> int:
        """Per-clip layout: load each clip of ``rows`` and add its codes into ``hist`` (K, C); clips counted."""
        seq = getattr(clips, "clips", clips)
        n = 0
        for r in rows:
            clip = seq[int(r)]
            try:
                _add_counts(hist, self.load(clip))
            except LabelError as e:
                if strict:
                    raise
                log.warning("code usage: skipping clip %s: %s", clip.id, e)
                continue
            n += 1
        return n

    def write_usage(self, clips: Any, codebook_size: int, single_code_allowed: bool = False) -> dict[str, Any]:
        """:meth:`usage`, also written atomically to ``usage.json`` in the store.

        Args:
            clips: the corpus (a ``Corpus``, ``ClipList`` or Clip sequence).
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


def _clip_at(rec: P.PackRecord, frame: int) -> str:
    """The id of the clip of pack ``rec`` that holds pack frame ``frame``."""
    hit = np.flatnonzero((rec.frame <= frame) & (rec.frame + rec.count > frame))
    return rec.id[int(hit[0])] if hit.size else f"? (pack frame {frame})"


def _add_counts(hist: np.ndarray, codes: np.ndarray) -> None:
    """``hist[k] += bincount(codes[k])`` (K, C) += (K, F); codes >= C raise ``LabelError``."""
    c = hist.shape[1]
    if codes.size and int(codes.max()) >= c:
        raise LabelError(f"code {int(codes.max())} outside [0, {c})")
    for k in range(codes.shape[0]):
        hist[k] += np.bincount(np.asarray(codes[k]), minlength=c)
