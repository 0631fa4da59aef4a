"""Label an ingested corpus with a teacher: batched, resumable, shardable by whole audio shards.

``label_corpus`` labels the clips of one range of the corpus's audio shards (manifest rows ``start``/``stop``,
rounded to whole shards: a shard belongs to the range that holds its first row; then contiguous block
``shard_index`` of ``num_shards`` of those shards), so processes, machines, torchrun ranks or a Prefect task
runner can split a corpus with no coordination: the labels of one audio shard are one pack
(``mert.teachers.packs``) written by one process. The range is processed in groups of whole shards (about
``group_seconds`` of audio to encode each, which bounds memory); a shard's pack is committed as soon as its
last clip is encoded. Clips in committed packs are skipped ("cached"), so a second run computes nothing and a
killed run resumes at the first uncommitted shard. (A per-clip store, written before packs, is still
completed clip by clip in its own layout.)

Windows: a clip with ``F = student_frames(L)`` label frames is split into
``n = ceil(F / chunk_frames)`` even chunks ``[a, b)`` of frames; chunk ``[a, b)`` is encoded from
samples ``[320 (a - left), 320 (b + right) + 80)`` (clipped to the clip) and its frames
``a .. b - 1`` are kept, where ``left``/``right`` are the teacher's context frames. All window
edges are multiples of 320 samples, so window frame ``j`` is clip frame ``start / 320 + j``.
Windows are sorted by length within a group and batched with right zero padding (harmless: kept frames never
read it). A background thread reads audio while the teacher encodes; a writer pool stores labels.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mert.data.shards import Clip, Corpus, CorpusError
from mert.teachers.base import HOP, WINDOW, TargetExtractor, TeacherError, student_frames
from mert.teachers.labels import LabelStore, UntrainableLabels
from mert.teachers.packs import ClipColumns, first_of_each
from mert.utils.io import atomic_write_csv, remove_stale_tmp
from mert.utils.runtime import tune_allocator

log = logging.getLogger(__name__)

GROUP_SECONDS = 3600.0
"""Audio encoded per group of whole shards (at least one shard): bounds the codes held in memory."""


@dataclass(frozen=True)
class Window:
    """Samples ``[start, start + length)`` of pending clip ``clip``; window frames ``keep .. keep + count - 1``
    are clip frames ``first .. first + count - 1``.
    """

    clip: int
    start: int
    length: int
    keep: int
    first: int
    count: int


@dataclass
class LabelSummary:
    """Counts of one labelling run over one manifest range. ``clips == computed + cached + rejected``."""

    teacher: str = ""
    store: str = ""
    rows: tuple[int, int] = (0, 0)
    clips: int = 0
    computed: int = 0
    cached: int = 0
    rejected: int = 0
    computed_seconds: float = 0.0
    wall_seconds: float = 0.0
    encode_seconds: float = 0.0
    windows: int = 0
    batches: int = 0
    rejects_csv: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    usage: dict = field(default_factory=dict)
    """Code usage over every labelled clip of the corpus (``LabelStore.usage``), also in the store's usage.json."""
    usage_seconds: float = 0.0

    @property
    def x_realtime(self) -> float:
        return self.computed_seconds / max(self.wall_seconds, 1e-9)

    def as_dict(self) -> dict:
        return {**self.__dict__, "rows": list(self.rows), "x_realtime": self.x_realtime}


def select_range(
    clips: list[Clip], shard_index: int = 0, num_shards: int = 1, start: int | None = None, stop: int | None = None
) -> tuple[list[Clip], tuple[int, int]]:
    """Rows ``[start, stop)`` of the manifest, then contiguous block ``shard_index`` of ``num_shards``.

    Returns:
        The clips and their ``(first, last + 1)`` manifest rows. The blocks of ``0 .. num_shards - 1``
        partition the range: every clip is in exactly one.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    lo, hi, _ = slice(start, stop).indices(len(clips))
    hi = max(lo, hi)
    n = hi - lo
    a, b = lo + shard_index * n // num_shards, lo + (shard_index + 1) * n // num_shards
    return clips[a:b], (a, b)


def select_shards(
    shard: np.ndarray, shard_index: int = 0, num_shards: int = 1, start: int | None = None, stop: int | None = None
) -> tuple[int, int]:
    """Manifest rows of block ``shard_index`` of ``num_shards`` of the audio shards of rows ``[start, stop)``.

    Args:
        shard: (N,) the manifest's shard column (manifest order: each shard's rows are contiguous).
        shard_index: the block (in ``[0, num_shards)``).
        num_shards: blocks: contiguous runs of whole shards, as even in shard count as possible.
        start: first manifest row of the range; a shard belongs to the range that holds its first row.
        stop: the row after the range.

    Returns:
        ``(first, last + 1)`` rows: whole shards. The blocks of ``0 .. num_shards - 1`` partition the range's
        shards, and adjacent row ranges partition the corpus's shards.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    shard = np.asarray(shard)
    n = shard.shape[0]
    lo, hi, _ = slice(start, stop).indices(n)
    firsts = np.flatnonzero(np.r_[True, shard[1:] != shard[:-1]]) if n else np.zeros(0, np.int64)
    inside = firsts[(firsts >= lo) & (firsts < max(lo, hi))]  # first rows of the range's shards
    if not len(inside):
        return lo, lo
    after = firsts[firsts > inside[-1]]
    bounds = np.r_[inside, after[0] if after.size else n]  # (S + 1,) the shards' first rows, then the last one's end
    _, (a, b) = select_range(range(len(inside)), shard_index, num_shards)
    return int(bounds[a]), int(bounds[b])


def plan_windows(index: int, length: int, chunk: int, left: int, right: int) -> list[Window]:
    """Windows of a clip of ``length`` samples (see the module docstring)."""
    frames = student_frames(length)
    n = max(1, math.ceil(frames / chunk))
    out = []
    for k in range(n):
        a, b = k * frames // n, (k + 1) * frames // n
        s = HOP * max(0, a - left)
        e = min(length, HOP * (b + right) + WINDOW - HOP)
        out.append(Window(index, s, e - s, a - s // HOP, a, b - a))
    return out


def _read(corpus: Corpus, clip: Clip, w: Window) -> np.ndarray:
    """Audio of one window; raises ``CorpusError`` for unreadable, truncated or non-finite audio."""
    try:
        x = corpus.audio(clip, w.start, w.length)
    except (CorpusError, OSError, ValueError) as e:
        raise CorpusError(f"unreadable shard {clip.shard}: {e}") from e
    if x.shape[0] != w.length:
        raise CorpusError(f"shard {clip.shard} is truncated: clip ends past its end")
    if not np.isfinite(x).all():
        raise CorpusError("non-finite samples")
    return x


def _batches(corpus: Corpus, clips: list[Clip], windows: list[Window], batch_size: int, pin: bool) -> Iterator:
    """Yield ``("reject", clip_index, reason)`` and ``("batch", windows, wav (B, S), lengths (B,))`` events."""
    bad: set[int] = set()
    for i in range(0, len(windows), batch_size):
        group, arrays = [], []
        for w in windows[i : i + batch_size]:
            if w.clip in bad:
                continue
            try:
                arrays.append(_read(corpus, clips[w.clip], w))
                group.append(w)
            except CorpusError as e:
                bad.add(w.clip)
                yield "reject", w.clip, str(e)
        if not group:
            continue
        wav = torch.zeros(len(group), max(a.shape[0] for a in arrays))  # (B, S), right zero padding
        for j, a in enumerate(arrays):
            wav[j, : a.shape[0]] = torch.from_numpy(a)
        yield "batch", group, wav.pin_memory() if pin else wav, torch.tensor([a.shape[0] for a in arrays])


def _prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Run ``it`` in a background thread, ``depth`` items ahead; re-raise its errors here.

    If the consumer stops early (an error, a kill), the thread notices within 0.1 s and exits.
    """
    q: queue.Queue = queue.Queue(depth)
    done, stop = object(), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in it:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)

    threading.Thread(target=work, daemon=True, name="label-prefetch").start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA if available (``cuda:$LOCAL_RANK`` under torchrun), else CPU."""
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TeacherError(f"device {device!r} requested but CUDA is not available")
    return dev


@dataclass
class ShardJob:
    """The clips of one audio shard to label and commit together.

    Attributes:
        shard: the audio shard's file name.
        clips: packed: every clip of the shard; per-clip: the ones to write.
        reasons: per clip, why it is rejected before encoding ("" when it is to be encoded).
        todo: per clip, its index into the group's clips to encode (-1: rejected); set by :func:`_plan_group`.
        first: per clip, whether it is the first of its (sha256, length) in the group (the others copy it).
    """

    shard: str
    clips: list[Clip]
    reasons: list[str]
    todo: list[int] = field(default_factory=list)
    first: list[bool] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(c.length for c, r in zip(self.clips, self.reasons) if not r)


class _Assembler:
    """Collects window codes per clip; hands each shard whose clips are all done to the writer pool."""

    def __init__(self, store: LabelStore, todo: list[Clip], jobs: list[ShardJob], windows: list[Window],
                 sample_rate: int, pool):  # fmt: skip
        self.store, self.todo, self.jobs, self.sample_rate, self.pool = store, todo, jobs, sample_rate, pool
        self.left = {}
        for w in windows:
            self.left[w.clip] = self.left.get(w.clip, 0) + 1
        self.parts: dict[int, np.ndarray] = {}
        self.done: dict[int, np.ndarray] = {}
        self.rejected: dict[int, str] = {}
        self.users: dict[int, list[int]] = {}
        self.waiting: list[set[int]] = []
        for j, job in enumerate(jobs):
            self.waiting.append({t for t in job.todo if t >= 0})
            for t in self.waiting[-1]:
                self.users.setdefault(t, []).append(j)
        self.futures = []
        for j, wait in enumerate(self.waiting):
            if not wait:
                self._submit(j)  # every clip rejected before encoding: commit at once

    def reject(self, i: int, reason: str) -> None:
        self.rejected[i] = reason
        self.parts.pop(i, None)
        self._finish(i)

    def add(self, w: Window, codes: np.ndarray) -> bool:
        """Place ``codes`` (K, F_window) of window ``w``; True when its clip was completed."""
        if w.clip in self.rejected:
            return False
        frames = student_frames(self.todo[w.clip].length)
        part = self.parts.setdefault(w.clip, np.zeros((codes.shape[0], frames), np.uint16))
        if codes.shape[1] < w.keep + w.count:
            raise TeacherError(f"teacher returned {codes.shape[1]} frames for a window needing {w.keep + w.count}")
        part[:, w.first : w.first + w.count] = codes[:, w.keep : w.keep + w.count]
        self.left[w.clip] -= 1
        if self.left[w.clip]:
            return False
        self.done[w.clip] = self.parts.pop(w.clip)
        self._finish(w.clip)
        return True

    def _finish(self, i: int) -> None:
        for j in self.users.get(i, []):
            self.waiting[j].discard(i)
            if not self.waiting[j]:
                self._submit(j)

    def _submit(self, j: int) -> None:
        job = self.jobs[j]
        codes = [self.done.get(t) if t >= 0 else None for t in job.todo]
        reasons = [r or self.rejected.get(t, "") for r, t in zip(job.reasons, job.todo)]
        args = (job.shard, job.clips, codes, reasons, self.sample_rate)
        self.futures.append(self.pool.submit(self.store.write_shard, *args))

    def drain(self) -> None:
        """Wait for the queued writes; re-raise the first write error."""
        for f in self.futures:
            f.result()
        self.futures.clear()


def _split_todo(store: LabelStore, corpus: Corpus, cols: ClipColumns, rows: tuple[int, int], s: LabelSummary
                ) -> tuple[list[ShardJob], list[tuple[Clip, str]]]:  # fmt: skip
    """The shards of ``rows`` still to label, and the clips rejected in committed packs; counts the cached ones.

    Bulk: the store's records (as columns: the record index, plus the records changed since) are matched with
    ``cols`` (the range's columns) vectorised; Clip objects are made only for the clips to label or report, and
    the reasons of rejected clips are read from their records.

    Args:
        store: the label store.
        corpus: the corpus (its ``clips`` give the Clip objects).
        cols: the columns of manifest rows ``rows``.
        rows: ``(first, last + 1)`` manifest rows (whole shards).
        s: the summary; ``cached`` is counted here.

    Returns:
        ``(jobs, rejects)``: one :class:`ShardJob` per shard to write, in manifest order, and the clips that
        committed packs record as rejected, with their reasons.
    """
    m = store.match(cols)
    n = len(cols)
    firsts = np.flatnonzero(np.r_[True, cols.shard[1:] != cols.shard[:-1]]) if n else np.zeros(0, np.int64)
    if store.packed:  # a shard is done iff every clip of it has an entry (labelled or rejected)
        done = np.repeat(np.minimum.reduceat(np.abs(m.state), firsts) if n else np.zeros(0, np.int8),
                         np.diff(np.r_[firsts, n])).astype(bool)  # fmt: skip
        write = np.flatnonzero(~done)
    else:  # a clip is done iff labelled; one clip per content key is written
        done = m.state == 1
        write = first_of_each(cols, np.flatnonzero(~done))
    s.cached += int((done & (m.state == 1)).sum()) + (0 if store.packed else int((~done).sum()) - len(write))
    rejects = [(corpus.clips[rows[0] + int(i)], m.reason(int(i))) for i in np.flatnonzero(done & (m.state == -1))]
    return _jobs(corpus, rows[0], cols, write), rejects


def _jobs(corpus: Corpus, row0: int, cols: ClipColumns, write: np.ndarray) -> list[ShardJob]:
    """:class:`ShardJob` per shard of the range rows ``write`` (relative to ``row0``) fall in."""
    jobs: list[ShardJob] = []
    for i in write.tolist():
        clip = corpus.clips[row0 + i]
        if not jobs or jobs[-1].shard != clip.shard:
            jobs.append(ShardJob(clip.shard, [], []))
        short = cols.length[i] < WINDOW
        jobs[-1].clips.append(clip)
        jobs[-1].reasons.append(f"too short: {clip.length} samples < {WINDOW} (no student frame)" if short else "")
    return jobs


def _groups(jobs: list[ShardJob], max_samples: float) -> Iterator[list[ShardJob]]:
    """Consecutive jobs with at most ``max_samples`` samples to encode each (at least one job)."""
    group, n = [], 0
    for job in jobs:
        if group and n + job.samples > max_samples:
            yield group
            group, n = [], 0
        group.append(job)
        n += job.samples
    if group:
        yield group


def _plan_group(group: list[ShardJob]) -> list[Clip]:
    """The distinct clips to encode for ``group`` (one per (sha256, length)); sets each job's ``todo``/``first``."""
    todo: list[Clip] = []
    index: dict[tuple[str, int], int] = {}
    for job in group:
        job.todo, job.first = [], []
        for clip, reason in zip(job.clips, job.reasons):
            key = (clip.sha256, clip.length)
            new = not reason and key not in index
            if new:
                index[key] = len(todo)
                todo.append(clip)
            job.todo.append(-1 if reason else index[key])
            job.first.append(new)
    return todo


def _write_rejects(root: Path, rows: tuple[int, int], whole: bool, rejects: list[tuple[Clip, str]]) -> Path:
    name = "label_rejects.csv" if whole else f"label_rejects.rows-{rows[0]:08d}-{rows[1]:08d}.csv"
    fields = ["id", "source", "shard", "offset", "length", "reason"]
    data = [{**{k: getattr(c, k) for k in fields[:-1]}, "reason": r} for c, r in rejects]
    atomic_write_csv(root / name, data, fields)
    return root / name


def label_corpus(
    corpus_dir: str | Path,
    labels_dir: str | Path,
    teacher: TargetExtractor,
    *,
    batch_size: int = 8,
    shard_index: int = 0,
    num_shards: int = 1,
    start: int | None = None,
    stop: int | None = None,
    device: str = "auto",
    progress: bool = True,
    usage: bool = True,
    allow_single_code: bool = False,
    group_seconds: float = GROUP_SECONDS,
) -> LabelSummary:
    """Label the audio shards of manifest rows ``[start, stop)``, block ``shard_index`` of ``num_shards``.

    Args:
        corpus_dir: the ingested corpus.
        labels_dir: the labels directory (the store is ``labels_dir/<teacher key>``; new stores are packed).
        teacher: the teacher.
        batch_size: windows per forward pass.
        shard_index: this process's block of the range's shards (:func:`select_shards`).
        num_shards: blocks.
        start: first manifest row of the range (rounded to whole audio shards).
        stop: the row after the range.
        device: ``auto``, ``cpu``, ``cuda[:N]``.
        progress: a progress bar.
        usage: compute and write the store's code usage afterwards.
        allow_single_code: see Raises.
        group_seconds: audio encoded per group of shards (memory bound; windows are length-sorted per group).

    Returns:
        A :class:`LabelSummary`. Unreadable / truncated / non-finite audio and clips too short for
        one student frame are listed in the range's ``label_rejects*.csv`` and skipped (recorded as absent in
        their pack). With ``usage``, the code usage of every clip of the corpus labelled in the store so far (all
        ranges) is computed after the run (not counted in ``wall_seconds``) and written to ``usage.json``.

    Raises:
        UntrainableLabels: with ``usage``, a codebook uses a single code (the labels stay on disk, so a rerun
            computes nothing) and ``allow_single_code`` is false; with it true, the store is accepted with a
            loud warning and ``usage.json`` records ``single_code_allowed`` for ``mert pretrain``.
    """
    t0 = time.perf_counter()
    tune_allocator()  # the teacher's batch buffers are reused, not re-mapped (mert/utils/runtime.py)
    corpus = Corpus(corpus_dir, verify=False)  # a bad shard rejects its clips, not the run
    if corpus.sample_rate != teacher.sample_rate:
        raise TeacherError(f"corpus at {corpus.sample_rate} Hz but teacher {teacher.name} needs {teacher.sample_rate}")
    cols = ClipColumns.of(corpus)
    rows = select_shards(cols.shard, shard_index, num_shards, start, stop)
    store = LabelStore.create(labels_dir, teacher.key, teacher.identity())
    for d in store.tmp_dirs():
        remove_stale_tmp(d)
    s = LabelSummary(teacher=teacher.key, store=str(store.root), rows=rows, clips=rows[1] - rows[0])
    jobs, rejects = _split_todo(store, corpus, _rows(cols, *rows), rows, s)
    dev = resolve_device(device)
    teacher.to(dev)
    from tqdm import tqdm

    total = round(sum(j.samples for j in jobs) / corpus.sample_rate, 1)
    with tqdm(total=total, unit="s", desc=f"label {teacher.name}", disable=not progress or not jobs) as bar:
        for group in _groups(jobs, group_seconds * corpus.sample_rate):
            rejects += _label_group(corpus, store, group, teacher, s, batch_size, dev, bar)
    s.rejected = len(rejects)
    for _, reason in rejects:
        key = reason.split(":")[0]
        s.reasons[key] = s.reasons.get(key, 0) + 1
    whole = (rows[0], rows[1]) == (0, len(corpus.clips))
    s.rejects_csv = str(_write_rejects(store.root, rows, whole, rejects))
    s.wall_seconds = time.perf_counter() - t0
    if usage:
        _write_usage(store, corpus, teacher, s, allow_single_code)
    return s


def _rows(cols: ClipColumns, a: int, b: int) -> ClipColumns:
    return ClipColumns(cols.shard_names, cols.shard[a:b], cols.offset[a:b], cols.length[a:b], cols.sha256[a:b])


def _label_group(corpus, store, group: list[ShardJob], teacher, s: LabelSummary, batch_size, dev, bar
                 ) -> list[tuple[Clip, str]]:  # fmt: skip
    """Encode and commit the shards of ``group``; count their clips into ``s``; return their rejected clips."""
    todo = _plan_group(group)
    windows = [w for i, c in enumerate(todo) for w in _plan(i, c.length, teacher)]
    windows.sort(key=lambda w: -w.length)  # similar lengths per batch: little padding
    s.windows += len(windows)
    with ThreadPoolExecutor(2, thread_name_prefix="label-write") as pool:
        asm = _Assembler(store, todo, group, windows, corpus.sample_rate, pool)
        try:
            _encode_all(corpus, todo, windows, teacher, asm, s, batch_size, dev, bar)
        finally:
            asm.drain()
    rejects = []
    for job in group:
        for clip, reason, t, first in zip(job.clips, job.reasons, job.todo, job.first):
            why = reason or asm.rejected.get(t, "")
            if why:
                rejects.append((clip, why))
            elif first:
                s.computed += 1
                s.computed_seconds += clip.length / corpus.sample_rate
            else:
                s.cached += 1  # the same audio elsewhere in the group: computed once, stored twice
    return rejects


def _write_usage(store: LabelStore, corpus: Corpus, teacher, s: LabelSummary, allow_single_code: bool) -> None:
    t1 = time.perf_counter()
    s.usage = store.write_usage(corpus, teacher.codebook_size, single_code_allowed=allow_single_code)
    s.usage_seconds = time.perf_counter() - t1
    try:
        check_code_usage(s.usage, allow_single_code, "mert label")
    except UntrainableLabels as e:
        e.summary = s  # what was labelled, for the caller's report
        raise


def single_code_codebooks(usage: dict) -> list[str]:
    """Codebooks of a ``LabelStore.usage`` dict whose labels use one code only."""
    return [k for k, u in usage.get("codebooks", {}).items() if u["distinct"] == 1]


def _single_code_usage(u: dict) -> str:
    return (
        f"code {u['top_code']} on all {u['frames']} frames: {u['distinct']} of {u['codebook_size']} codes used, "
        f"entropy {abs(u['entropy_bits']):.2f} bits, top share {u['top_share']:.3f}"
    )


def single_code_warning(usage: dict, k: str) -> str:
    return (
        f"codebook {k} of {usage['teacher']} uses a single code ({_single_code_usage(usage['codebooks'][k])}): "
        "it carries no information for the student"
    )


def single_code_summary(usage: dict, keys: list[str]) -> str:
    """``codebook 1 uses a single code (...)``, codebooks with the same usage grouped (``codebooks 0, 1 each ...``)."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(_single_code_usage(usage["codebooks"][k]), []).append(k)
    return "; ".join(
        f"codebook {ks[0]} uses a single code ({what})"
        if len(ks) == 1
        else f"codebooks {', '.join(ks)} each use a single code ({what})"
        for what, ks in groups.items()
    )


ALLOW_FLAG = "--allow-single-code"


def check_code_usage(usage: dict, allowed: bool, who: str) -> None:
    """Refuse a store in which a codebook uses a single code, or accept it loudly when ``allowed``.

    Args:
        usage: a ``LabelStore.usage`` dict (``usage.json``).
        allowed: the store was accepted with ``mert label --allow-single-code``.
        who: the command refusing (named in the message).

    Raises:
        UntrainableLabels: a single-code codebook and not ``allowed``; the message names each such codebook
            and its code usage, why it cannot teach, and how to fix or override it.
    """
    single = single_code_codebooks(usage)
    if not single:
        return
    lines = single_code_summary(usage, single)
    if allowed:
        log.warning("label store %s ACCEPTED WITH %s, THE STUDENT WILL LEARN NOTHING FROM %s: %s", usage.get("teacher"),
                    ALLOW_FLAG.upper(), "THESE CODEBOOKS" if len(single) > 1 else "THIS CODEBOOK", lines)  # fmt: skip
        return
    raise UntrainableLabels(
        f"{who} refuses label store {usage.get('teacher')}: {lines}, which carries no information for the "
        "student. A student that always predicts that code is always right, so its masked accuracy climbs on a "
        "trivial target (e.g. EnCodec weights whose "
        "codebooks were never initialised). Fix the teacher (label.rvq.weights: pretrained or a trained "
        f"checkpoint), or accept the store anyway with `mert label CORPUS LABELS {ALLOW_FLAG}` (nothing is "
        "relabelled)."
    )


def label_array(teacher: TargetExtractor, wav: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Labels of one in-memory clip with the same windowing as :func:`label_corpus`.

    Args:
        teacher: the teacher (on its device).
        wav: (S,) float32 audio at ``teacher.sample_rate``.
        batch_size: windows per forward pass.

    Returns:
        (K, student_frames(S)) uint16.
    """
    dev = next(iter(teacher.buffers()), torch.zeros(0)).device
    windows = _plan(0, wav.shape[0], teacher)
    out = np.zeros((teacher.n_codebooks, student_frames(wav.shape[0])), np.uint16)
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        x = torch.zeros(len(group), max(w.length for w in group))  # (B, S), right zero padding
        for j, w in enumerate(group):
            x[j, : w.length] = torch.from_numpy(wav[w.start : w.start + w.length])
        codes = teacher.encode(x.to(dev), torch.tensor([w.length for w in group], device=dev)).cpu().numpy()
        for w, c in zip(group, codes):
            out[:, w.first : w.first + w.count] = c[:, w.keep : w.keep + w.count]
    return out


def _plan(i: int, length: int, teacher: TargetExtractor) -> list[Window]:
    return plan_windows(i, length, teacher.chunk_frames, teacher.left_context_frames, teacher.right_context_frames)


def _encode_all(corpus, todo, windows, teacher, asm: _Assembler, s: LabelSummary, batch_size, dev, bar) -> None:
    events = _prefetch(_batches(corpus, todo, windows, batch_size, pin=dev.type == "cuda"))
    with contextlib.closing(events):
        for ev in events:
            if ev[0] == "reject":
                asm.reject(ev[1], ev[2])
                log.warning("skipping clip %s (%s): %s", todo[ev[1]].id, todo[ev[1]].source, ev[2])
                continue
            _, group, wav, lengths = ev
            t = time.perf_counter()
            codes = teacher.encode(wav.to(dev, non_blocking=True), lengths.to(dev)).cpu().numpy()  # (B, K, F)
            s.encode_seconds += time.perf_counter() - t
            if codes.size and (codes.min() < 0 or codes.max() >= teacher.codebook_size):
                raise TeacherError(f"{teacher.name} returned codes outside [0, {teacher.codebook_size})")
            s.batches += 1
            for w, c in zip(group, codes):
                if asm.add(w, c):
                    bar.update(round(todo[w.clip].length / corpus.sample_rate, 1))


def run_label(
    corpus_dir: str | Path,
    labels_dir: str | Path,
    params,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
    start: int | None = None,
    stop: int | None = None,
    progress: bool = True,
    allow_single_code: bool = False,
) -> LabelSummary:
    """The ``label`` stage: build the teacher from ``params`` (``LabelParams``) and label the range.

    Raises:
        UntrainableLabels: a codebook uses a single code and ``allow_single_code`` is false (see
            :func:`check_code_usage`).
    """
    from mert.teachers.build import build_teacher

    teacher = build_teacher(params, corpus_dir, labels_dir, progress=progress)
    return label_corpus(
        corpus_dir,
        labels_dir,
        teacher,
        batch_size=params.batch_size,
        shard_index=shard_index,
        num_shards=num_shards,
        start=start,
        stop=stop,
        device=params.device,
        progress=progress,
        allow_single_code=allow_single_code,
    )
