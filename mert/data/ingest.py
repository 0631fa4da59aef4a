"""``mert ingest``: a directory tree of audio -> a sharded 24 kHz mono corpus.

Every file is hashed, decoded, checked, downmixed and resampled in a pool of worker
processes; the parent writes shards in source-path order, so the same input always gives
the same corpus. Bad files never stop the run: each is listed in ``rejects.csv`` with its
reason, and ``found = ingested + unchanged + rejected`` always holds.

Re-running is incremental: a file whose (path, content hash) is already in the manifest is
not decoded again; new files go into new shards; files that disappeared or changed are
dropped from the manifest (changed ones are ingested anew).
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
from mert.utils.io import atomic_save_npy, atomic_write_csv, atomic_write_json, remove_stale_tmp, sha256_file


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

    def __post_init__(self):
        if self.sample_rate <= 0 or self.shard_seconds <= 0 or self.min_seconds < 0:
            raise ValueError("sample_rate and shard_seconds must be > 0, min_seconds >= 0")
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
    out = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not name.startswith(".") and p.suffix.lower() in A.AUDIO_LIKE:
                out.append(p)
    return out


def _process(path: str, rel: str, known: dict[str, str], p: IngestParams) -> _Result:
    """Hash, decode and check one file (runs in a worker process)."""
    try:
        sha = sha256_file(path)
    except OSError as e:
        return _Result(rel, reason=f"cannot read: {e.strerror or e}")
    if known.get(rel) == sha:
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


class _ShardWriter:
    """Accumulates clips and flushes them as atomic shards, updating the manifest each time."""

    def __init__(self, root: Path, clips: list[S.Clip], p: IngestParams):
        self.root, self.clips, self.p = root, clips, p
        used = [int(c.shard[6:11]) for c in clips]
        self.next_index = max(used, default=-1) + 1
        self.buf: list[np.ndarray] = []
        self.pending: list[S.Clip] = []
        self.filled = 0

    def add(self, r: _Result, sample_rate: int) -> None:
        n = r.audio.shape[0]
        clip = S.Clip(
            id=r.sha256[:16], source=r.rel, sha256=r.sha256, duration_s=round(n / sample_rate, 4),
            orig_sr=r.info.sample_rate, channels=r.info.channels, format=r.info.format,
            shard=S.shard_name(self.next_index), offset=self.filled, length=n,
        )  # fmt: skip
        self.buf.append(r.audio)
        self.pending.append(clip)
        self.filled += n
        if self.filled >= self.p.shard_seconds * sample_rate:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        atomic_save_npy(self.root / S.SHARD_DIR / S.shard_name(self.next_index), np.concatenate(self.buf))
        self.clips.extend(self.pending)
        S.write_manifest(self.root, self.clips)  # the shard becomes visible only now
        self.next_index += 1
        self.buf, self.pending, self.filled = [], [], 0


def _prepare_out(out: Path, sample_rate: int) -> list[S.Clip]:
    """Create/validate the output dir, drop orphan shards and temp files; return the current manifest."""
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
        if existing.sample_rate != sample_rate:
            raise IngestError(f"{out} holds a {existing.sample_rate} Hz corpus; asked for {sample_rate} Hz")
    S.write_corpus_meta(out, sample_rate)
    remove_stale_tmp(out)
    remove_stale_tmp(out / S.SHARD_DIR)
    clips = S.read_manifest(out)
    live = {c.shard for c in clips}
    for shard in (out / S.SHARD_DIR).glob("shard-*.npy"):
        if shard.name not in live:
            shard.unlink()  # written by a killed run before its manifest update: never trusted
    return clips


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
        IngestError: the input directory is missing or the output is unwritable/full.
    """
    p = params or IngestParams()
    src, out = Path(src), Path(out)
    t0 = time.perf_counter()
    if not src.is_dir():
        raise IngestError(f"input directory not found: {src}")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise IngestError(f"output directory {out} must not be inside the input directory {src}")
    files = scan(src)
    clips = _prepare_out(out, p.sample_rate)
    src_bytes = sum(f.stat().st_size for f in files if f.is_file())
    _check_space(out, int(src_bytes * 2))

    rels = [f.relative_to(src).as_posix() for f in files]
    present = set(rels)
    summary = IngestSummary(found=len(files))
    known = {c.source: c.sha256 for c in clips}
    # Rows of files still present are carried over up front, so a manifest written mid-run
    # (after each shard) never forgets them; changed files are swapped out when seen.
    writer = _ShardWriter(out, [c for c in clips if c.source in present], p)
    seen = {c.sha256: c.source for c in writer.clips}  # content hash -> the copy we keep
    rejects: list[dict[str, str]] = []

    jobs = ((str(f), rel, known, p) for f, rel in zip(files, rels))
    workers = p.workers or ((os.cpu_count() or 1) if src_bytes > p.parallel_min_mb * 1e6 else 1)
    bar = _progress(len(files), progress)
    for r in _ordered(_process, jobs, min(workers, max(1, len(files)))):
        if r.unchanged:
            summary.unchanged += 1
        else:
            if r.rel in known:  # content changed since the last run: forget the old row
                writer.clips = [c for c in writer.clips if c.source != r.rel]
                seen.pop(known[r.rel], None)
            if r.reason is None and r.sha256 in seen:
                r.reason = f"duplicate content of {seen[r.sha256]}"
            if r.reason is not None:
                rejects.append({"path": r.rel, "reason": r.reason})
                key = r.reason.split(":")[0].split(" (")[0]
                summary.reasons[key] = summary.reasons.get(key, 0) + 1
            else:
                seen[r.sha256] = r.rel
                writer.add(r, p.sample_rate)
                summary.ingested += 1
                summary.ingested_seconds += r.audio.shape[0] / p.sample_rate
        _tick(bar, summary)
    if bar is not None:
        bar.close()
    writer.flush()
    S.write_manifest(out, writer.clips)

    summary.rejected = len(rejects)
    summary.removed = len(clips) - summary.unchanged
    summary.corpus_files = len(writer.clips)
    summary.corpus_seconds = sum(c.length for c in writer.clips) / p.sample_rate
    summary.wall_seconds = time.perf_counter() - t0
    atomic_write_csv(out / S.REJECTS, rejects, ["path", "reason"])
    atomic_write_json(out / S.SUMMARY, summary.as_dict())
    assert summary.found == summary.ingested + summary.unchanged + summary.rejected
    return summary


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
