"""``mert ingest``: a directory tree of audio -> a sharded 24 kHz mono corpus.

Every file is hashed, decoded, checked, downmixed and resampled in a pool of worker
processes; the parent writes shards in source-path order, so the same input always gives
the same corpus. Bad files never stop the run: each is listed in ``rejects.csv`` with its
reason, and ``found = ingested + unchanged + rejected`` always holds.

Re-running is incremental: a file whose path, size and mtime match its manifest row is unchanged
without being read (the cheap check DVC and rsync make); one whose stat changed is hashed, and is
unchanged if its content hash still matches (its new stat is recorded), else ingested anew. New
files go into new shards; files that disappeared or changed are dropped from the manifest. Nothing
a job carries grows with the corpus, so an unchanged re-run costs a stat per file and one read of
the clip table.

Crash safety without a manifest rewrite per shard (which made a first ingestion quadratic in the
corpus): each shard is committed by its row file ``shards/shard-NNNNN.csv``, written atomically
after the shard. The manifest (and table) is rewritten after a shard only when the time since its
last rewrite is at least ``MANIFEST_REWRITE_RATIO`` times what that rewrite took, so readers see
progress while rewriting costs at most ~1/10 of the run at any corpus size; and once at the end. A
run killed in between leaves committed shards that the next run adopts from their row files, and
uncommitted orphans that it deletes.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from mert import audio as A
from mert.data import shards as S
from mert.params import section
from mert.utils.io import atomic_save_npy, atomic_write_csv, atomic_write_json, read_csv, remove_stale_tmp, sha256_file


@section("ingest")
@dataclass
class IngestParams:
    """Parameters of ``mert ingest`` (``params.yaml`` section ``ingest``)."""

    sample_rate: int = A.SAMPLE_RATE
    """Output rate in Hz (24 kHz for MERT-v1, 16 kHz for v0)."""
    min_seconds: float = 3.0
    """Shorter files are rejected: the reference drops clips under 3 s for pretraining."""
    max_seconds: float = 3600.0
    """Longer files are rejected before decoding (absurd lengths, broken headers)."""
    silence_dbfs: float = -60.0
    """Files whose peak is at or below this level are rejected as silent."""
    shard_seconds: float = 600.0
    """Target shard size in seconds of audio (600 s = 57.6 MB at 24 kHz float32)."""
    workers: int = 0
    """Decoding processes; 0 = auto (one per CPU core for inputs over ``parallel_min_mb``, else
    in-process: starting a pool costs seconds). Does not change the output."""
    parallel_min_mb: float = 256.0
    """With ``workers: 0``, inputs smaller than this (MB of source files) are decoded in-process."""
    shard_dtype: str = "float32"
    """How shards store samples: ``float32`` (the default: exact, what every version reads) or ``int16`` (16-bit
    PCM ``round(x * 32768)``, half the disk and page cache; read back as ``q / 32768``, error <= 2^-16, below the
    resolution of most sources, which are 16-bit PCM). A corpus keeps the dtype it was created with."""

    def __post_init__(self):
        if self.sample_rate <= 0 or self.shard_seconds <= 0 or self.min_seconds < 0:
            raise ValueError("sample_rate and shard_seconds must be > 0, min_seconds >= 0")
        if self.shard_dtype not in S.SHARD_DTYPES:
            raise ValueError(f"shard_dtype {self.shard_dtype!r} not in {S.SHARD_DTYPES}")
        if self.max_seconds <= self.min_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds}) must exceed min_seconds ({self.min_seconds})")


@dataclass
class IngestSummary:
    """Counts of one ingestion run. ``found == ingested + unchanged + rejected``."""

    found: int = 0
    ingested: int = 0
    unchanged: int = 0
    rejected: int = 0
    removed: int = 0  # manifest rows dropped because their source vanished or changed
    ingested_seconds: float = 0.0
    corpus_files: int = 0
    corpus_seconds: float = 0.0
    wall_seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class IngestError(RuntimeError):
    """The run itself cannot proceed (missing input, unwritable output). Single files never raise this."""


@dataclass
class _Result:
    rel: str
    sha256: str | None = None
    audio: np.ndarray | None = None
    info: A.AudioInfo | None = None
    reason: str | None = None
    unchanged: bool = False


def scan(src: Path) -> list[Path]:
    """Audio-looking files under ``src`` (recursive, sorted, hidden files skipped)."""
    return [Path(e.path) for e in _scan_entries(src)]


def _scan_entries(src: Path) -> list[os.DirEntry]:
    """:func:`scan`'s files as ``os.DirEntry`` (their ``stat()`` is cached: one syscall per file)."""
    out: list[os.DirEntry] = []

    def walk(d: str) -> None:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                walk(e.path)
            elif os.path.splitext(e.name)[1].lower() in A.AUDIO_LIKE:
                out.append(e)

    walk(str(src))
    return out


def _process(path: str, rel: str, known_sha: str | None, p: IngestParams) -> _Result:
    """Hash, decode and check one file (runs in a worker process); ``known_sha``: its manifest hash, if any."""
    try:
        sha = sha256_file(path)
    except OSError as e:
        return _Result(rel, reason=f"cannot read: {e.strerror or e}")
    if known_sha == sha:
        return _Result(rel, sha, unchanged=True)
    try:
        raw, meta = A.decode(path, p.max_seconds)
        A.check_signal(path, raw, p.silence_dbfs)
        if meta.duration < p.min_seconds:
            raise A.AudioError(path, f"too short: {meta.duration:.2f} s < min {p.min_seconds:g} s")
        mono = A.resample(A.to_mono(raw), meta.sample_rate, p.sample_rate)
        np.clip(mono, -1.0, 1.0, out=mono)
    except A.AudioError as e:
        return _Result(rel, sha, reason=e.reason)
    except MemoryError:
        return _Result(rel, sha, reason="out of memory while decoding")
    return _Result(rel, sha, audio=mono.astype(np.float32, copy=False), info=meta)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; no oversubscription


def _ordered(fn: Callable, jobs: Iterable[tuple], workers: int) -> Iterator[_Result]:
    """Run ``fn(*job)`` for each job, yielding results in job order with bounded memory."""
    if workers <= 1:
        for job in jobs:
            yield fn(*job)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        window: list[Future] = []
        for job in jobs:
            window.append(pool.submit(fn, *job))
            if len(window) >= 2 * workers:
                yield window.pop(0).result()
        for fut in window:
            yield fut.result()


def row_file(shard: str) -> str:
    """``shard-00042.npy`` -> ``shard-00042.csv``: the rows that commit a shard written by an unfinished run."""
    return shard[:-4] + ".csv"


MANIFEST_REWRITE_RATIO = 10.0
"""A mid-run manifest rewrite waits until ``ratio x`` the last rewrite's duration has passed (amortised cost)."""


class _Checkpointer:
    """Rewrites the manifest mid-run at an amortised cost (see :data:`MANIFEST_REWRITE_RATIO`)."""

    def __init__(self, out: Path, run: _Run, writer: _ShardWriter):
        self.out, self.run, self.writer = out, run, writer
        self.last, self.took = time.perf_counter(), 0.0

    def __call__(self) -> None:
        t = time.perf_counter()
        if t - self.last < MANIFEST_REWRITE_RATIO * self.took:
            return
        S.write_table(self.out, self.run.final_table(self.writer.clips))
        self.last = time.perf_counter()
        self.took = self.last - t


class _ShardWriter:
    """Accumulates clips and flushes them as atomic shards, each committed by its row file (see the module doc)."""

    def __init__(self, root: Path, next_index: int, p: IngestParams):
        self.root, self.p = root, p
        self.next_index = next_index
        self.clips: list[S.Clip] = []  # the new clips of this run, in committed shards
        self.buf: list[np.ndarray] = []
        self.pending: list[S.Clip] = []
        self.filled = 0
        self.on_flush: Callable[[], None] | None = None

    def add(self, r: _Result, sample_rate: int, stat: tuple[int, int]) -> None:
        n = r.audio.shape[0]
        clip = S.Clip(
            id=r.sha256[:16], source=r.rel, sha256=r.sha256, duration_s=round(n / sample_rate, 4),
            orig_sr=r.info.sample_rate, channels=r.info.channels, format=r.info.format,
            shard=S.shard_name(self.next_index), offset=self.filled, length=n, size=stat[0], mtime_ns=stat[1],
        )  # fmt: skip
        self.buf.append(r.audio)
        self.pending.append(clip)
        self.filled += n
        if self.filled >= self.p.shard_seconds * sample_rate:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        name = S.shard_name(self.next_index)
        audio = np.concatenate(self.buf)
        atomic_save_npy(
            self.root / S.SHARD_DIR / name, S.quantize_int16(audio) if self.p.shard_dtype == "int16" else audio
        )
        rows = (c.to_row() for c in self.pending)
        atomic_write_csv(self.root / S.SHARD_DIR / row_file(name), rows, S.MANIFEST_FIELDS)  # commits the shard
        self.clips.extend(self.pending)
        self.next_index += 1
        self.buf, self.pending, self.filled = [], [], 0
        if self.on_flush is not None:
            self.on_flush()


def _prepare_out(out: Path, p: IngestParams) -> S.ClipTable:
    """Create/validate the output dir, adopt committed shards of a killed run, drop orphans and temp files.

    Returns:
        The current clip table (the manifest plus adopted shards).
    """
    try:
        (out / S.SHARD_DIR).mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise IngestError(f"cannot write to output directory {out}: {e.strerror or e}") from e
    meta = out / S.CORPUS_META
    if meta.exists():
        existing = S.Corpus(out, verify=False)
        if existing.sample_rate != p.sample_rate:
            raise IngestError(f"{out} holds a {existing.sample_rate} Hz corpus; asked for {p.sample_rate} Hz")
        if existing.dtype != p.shard_dtype:
            raise IngestError(f"{out} holds {existing.dtype} shards; asked for shard_dtype {p.shard_dtype} "
                              "(a corpus keeps one dtype: ingest into a new directory)")  # fmt: skip
    S.write_corpus_meta(out, p.sample_rate, p.shard_dtype)
    remove_stale_tmp(out)
    remove_stale_tmp(out / S.SHARD_DIR)
    table = S.open_table(out)
    live = set(table.shard_names)
    adopted = _adopt(out, live)
    if adopted:
        table = _merge(table, adopted)
        S.write_table(out, table)
        live = set(table.shard_names)
    for shard in (out / S.SHARD_DIR).glob("shard-*.npy"):
        if shard.name not in live:
            shard.unlink()  # written by a killed run and never committed: not trusted
    for rows in (out / S.SHARD_DIR).glob("shard-*.csv"):
        rows.unlink()  # adopted (now in the manifest) or orphaned with its shard
    return table


def _adopt(out: Path, live: set[str]) -> list[S.Clip]:
    """Rows of shards that a killed run committed (row file and shard present) but never put in the manifest."""
    clips: list[S.Clip] = []
    for rows in sorted((out / S.SHARD_DIR).glob("shard-*.csv")):
        shard = rows.with_suffix(".npy")
        if shard.name not in live and shard.exists():
            clips += [S.Clip.from_row(r) for r in read_csv(rows)]
    return clips


def _merge(table: S.ClipTable, new: list[S.Clip]) -> S.ClipTable:
    """``table`` with the rows ``new`` added in manifest order; a source in ``new`` replaces its old row."""
    replaced = {c.source for c in new}
    keep = np.array([i for i, src in enumerate(table.sources()) if src not in replaced], dtype=np.int64)
    return table.select(keep, new)


def _check_space(out: Path, need_bytes: int) -> None:
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise IngestError(f"not enough disk space in {out}: need ~{need_bytes / 1e9:.2f} GB, {free / 1e9:.2f} GB free")


def ingest(
    src: str | Path,
    out: str | Path,
    params: IngestParams | None = None,
    progress: bool = True,
) -> IngestSummary:
    """Ingest every audio file under ``src`` into the corpus at ``out``.

    Args:
        src: directory tree of audio files (any decodable format, rate, channel count).
        out: corpus directory (created; an existing corpus is updated incrementally).
        params: see :class:`IngestParams`.
        progress: show a progress bar.

    Returns:
        The run's :class:`IngestSummary` (also written to ``out/summary.json``).

    Raises:
        IngestError: the input directory is missing, the output is unwritable/full, or holds a corpus of another
            rate or shard dtype.
    """
    p = params or IngestParams()
    src, out = Path(src), Path(out)
    t0 = time.perf_counter()
    if not src.is_dir():
        raise IngestError(f"input directory not found: {src}")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise IngestError(f"output directory {out} must not be inside the input directory {src}")
    entries = _scan_entries(src)
    table = _prepare_out(out, p)
    files = [_stat(e, str(src)) for e in entries]  # (path, rel, size, mtime_ns); size -1: unreadable
    run = _Run(table, files, p)
    need = sum(f[2] for f, todo in zip(files, run.todo) if todo and f[2] > 0)
    _check_space(out, int(need * 2))

    summary = IngestSummary(found=len(files), unchanged=len(files) - int(run.todo.sum()))
    writer = _ShardWriter(out, max((S.shard_index(n) for n in table.shard_names), default=-1) + 1, p)
    writer.on_flush = _Checkpointer(out, run, writer)
    rejects: list[dict[str, str]] = []
    jobs = ((f[0], f[1], run.known_sha(f[1]), p) for f, todo in zip(files, run.todo) if todo)
    workers = p.workers or ((os.cpu_count() or 1) if need > p.parallel_min_mb * 1e6 else 1)
    bar = _progress(len(files), progress)
    if bar is not None:
        bar.update(summary.unchanged)
    stats = {f[1]: (f[2], f[3]) for f, todo in zip(files, run.todo) if todo}
    for r in _ordered(_process, jobs, min(workers, max(1, int(run.todo.sum())))):
        run.take(r, stats[r.rel], writer, summary, rejects)
        _tick(bar, summary)
    if bar is not None:
        bar.close()
    writer.flush()
    final = run.final_table(writer.clips)
    if final is not table or run.restat or not (out / S.MANIFEST).exists():
        S.write_table(out, final)
    for rows in (out / S.SHARD_DIR).glob("shard-*.csv"):
        rows.unlink()  # the manifest holds these rows now
    _write_caches(out)

    summary.rejected = len(rejects)
    summary.removed = table.n - summary.unchanged
    summary.corpus_files = final.n
    summary.corpus_seconds = float(np.asarray(final.length).sum()) / p.sample_rate
    summary.wall_seconds = time.perf_counter() - t0
    atomic_write_csv(out / S.REJECTS, rejects, ["path", "reason"])
    atomic_write_json(out / S.SUMMARY, summary.as_dict())
    assert summary.found == summary.ingested + summary.unchanged + summary.rejected
    return summary


def _write_caches(out: Path) -> None:
    """The corpus's reader caches, current for what this run leaves: ``table/`` (if the manifest outgrew it, e.g.
    written by an older version) and ``table/shards.npz`` (readers never write them).
    """
    if S.ClipTable.load(out) is None:
        S.ClipTable.from_csv(out / S.MANIFEST).save(out)
    S.Corpus(out, verify=False).verify(save_cache=True)


def _stat(e: os.DirEntry, src: str) -> tuple[str, str, int, int]:
    """``(path, path relative to src in POSIX form, size, mtime_ns)``; size and mtime -1 if the stat fails."""
    rel = os.path.relpath(e.path, src).replace(os.sep, "/")
    try:
        st = e.stat()
        return e.path, rel, st.st_size, st.st_mtime_ns
    except OSError:
        return e.path, rel, -1, -1


class _Run:
    """What one ingestion run decides per file, against the corpus's table (no per-job state that grows with N).

    Attributes:
        todo: (files,) bool: the file must be hashed (new, or its size/mtime differ from its row).
        restat: rows whose content was unchanged but whose stat changed (the manifest is rewritten to record it).
    """

    def __init__(self, table: S.ClipTable, files: list[tuple[str, str, int, int]], p: IngestParams):
        self.table, self.p = table, p
        n = table.n
        self.row_of = {src: i for i, src in enumerate(table.sources())}  # the one per-row structure: O(N), once
        size, mtime = np.asarray(table.columns["size"]), np.asarray(table.columns["mtime_ns"])
        self.todo = np.ones(len(files), bool)
        self.present = np.zeros(n, bool)
        for j, (_, rel, sz, mt) in enumerate(files):
            i = self.row_of.get(rel)
            if i is not None:
                self.present[i] = True
                self.todo[j] = not (sz >= 0 and size[i] == sz and mtime[i] == mt)
        self.dropped: set[int] = set()  # rows replaced (changed content) or rejected on re-read
        self.restat: dict[int, tuple[int, int]] = {}
        self._seen: dict[bytes, str] | None = None

    def known_sha(self, rel: str) -> str | None:
        i = self.row_of.get(rel)
        return None if i is None else self.table.columns["sha256"][i].decode()

    def seen(self) -> dict[bytes, str]:
        """Content hash -> the source kept with it (built on first use: only runs with work need it)."""
        if self._seen is None:
            keep = np.flatnonzero(self.present)
            sha = np.asarray(self.table.columns["sha256"])[keep].tolist()
            self._seen = {h: self.table.source(int(i)) for h, i in zip(sha, keep)}
        return self._seen

    def take(self, r: _Result, stat: tuple[int, int], writer: _ShardWriter, s: IngestSummary, rejects: list) -> None:
        i = self.row_of.get(r.rel)
        if r.unchanged:
            s.unchanged += 1
            self.restat[i] = stat
            return
        if i is not None:  # content changed (or unreadable) since the last run: forget the old row
            self.dropped.add(i)
            self.seen().pop(self.table.columns["sha256"][i], None)
        if r.reason is None and r.sha256.encode() in self.seen():
            r.reason = f"duplicate content of {self.seen()[r.sha256.encode()]}"
        if r.reason is not None:
            rejects.append({"path": r.rel, "reason": r.reason})
            key = r.reason.split(":")[0].split(" (")[0]
            s.reasons[key] = s.reasons.get(key, 0) + 1
            return
        self.seen()[r.sha256.encode()] = r.rel
        writer.add(r, self.p.sample_rate, stat)
        s.ingested += 1
        s.ingested_seconds += r.audio.shape[0] / self.p.sample_rate

    def final_table(self, new: list[S.Clip]) -> S.ClipTable:
        """The manifest after this run: present, unchanged rows (restat ones updated), then the new clips."""
        keep = self.present.copy()
        keep[list(self.dropped)] = False
        if keep.all() and not new and not self.restat:
            return self.table
        return self.table.select(np.flatnonzero(keep), new, self.restat)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="ingest", dynamic_ncols=True)


def _tick(bar, s: IngestSummary) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(audio_h=f"{s.ingested_seconds / 3600:.2f}", rejected=sum(s.reasons.values()))


@section("corpus")
@dataclass
class CorpusParams:
    """Which corpus the pipeline uses (``params.yaml`` section ``corpus``).

    Point ``source`` at any DVC-tracked directory of audio (``dvc add data/raw/mycorpus``) to train on
    your own music instead of the demo; ``dvc.yaml`` reads both paths from here.
    """

    source: str = "data/demo/raw"
    """Directory tree of raw audio to ingest."""
    dir: str = "data/corpus"
    """Where the ingested corpus is written."""
