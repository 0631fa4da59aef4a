"""Label an ingested corpus with a teacher: batched, resumable, shardable by manifest range.

``label_corpus`` labels the clips of one manifest range (``start``/``stop`` rows, then block
``shard_index`` of ``num_shards``), so processes, machines, torchrun ranks or a Prefect task
runner can split a corpus with no coordination: each clip's labels are written (atomically) as
soon as its last window is encoded, and clips that already have labels are skipped. Hence a
second run computes nothing and a killed run resumes with the missing clips.

Windows: a clip with ``F = student_frames(L)`` label frames is split into
``n = ceil(F / chunk_frames)`` even chunks ``[a, b)`` of frames; chunk ``[a, b)`` is encoded from
samples ``[320 (a - left), 320 (b + right) + 80)`` (clipped to the clip) and its frames
``a .. b - 1`` are kept, where ``left``/``right`` are the teacher's context frames. All window
edges are multiples of 320 samples, so window frame ``j`` is clip frame ``start / 320 + j``.
Windows are sorted by length and batched with right zero padding (harmless: kept frames never
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
from mert.teachers.labels import CLIP_DIR, LabelStore, UntrainableLabels
from mert.utils.io import atomic_write_csv, remove_stale_tmp

log = logging.getLogger(__name__)


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


class _Assembler:
    """Collects window codes per clip and hands each finished clip to the writer pool."""

    def __init__(self, store: LabelStore, clips: list[Clip], windows: list[Window], sample_rate: int, pool):
        self.store, self.clips, self.sample_rate, self.pool = store, clips, sample_rate, pool
        self.left = {}
        for w in windows:
            self.left[w.clip] = self.left.get(w.clip, 0) + 1
        self.parts: dict[int, np.ndarray] = {}
        self.rejected: dict[int, str] = {}
        self.futures = []

    def reject(self, i: int, reason: str) -> None:
        self.rejected[i] = reason
        self.parts.pop(i, None)

    def add(self, w: Window, codes: np.ndarray) -> bool:
        """Place ``codes`` (K, F_window) of window ``w``; True when its clip was completed and queued."""
        if w.clip in self.rejected:
            return False
        frames = student_frames(self.clips[w.clip].length)
        part = self.parts.setdefault(w.clip, np.zeros((codes.shape[0], frames), np.uint16))
        if codes.shape[1] < w.keep + w.count:
            raise TeacherError(f"teacher returned {codes.shape[1]} frames for a window needing {w.keep + w.count}")
        part[:, w.first : w.first + w.count] = codes[:, w.keep : w.keep + w.count]
        self.left[w.clip] -= 1
        if self.left[w.clip]:
            return False
        codes_done = self.parts.pop(w.clip)
        self.futures.append(self.pool.submit(self.store.write, self.clips[w.clip], codes_done, self.sample_rate))
        return True

    def drain(self) -> None:
        """Wait for the queued writes; re-raise the first write error."""
        for f in self.futures:
            f.result()
        self.futures.clear()


def _split_todo(store: LabelStore, clips: list[Clip], s: LabelSummary) -> tuple[list[Clip], list[tuple[Clip, str]]]:
    """Clips still to label (one per cache key), and the too-short ones; counts the cached ones."""
    todo, rejects, seen = [], [], set()
    for clip in clips:
        if store.has(clip) or (clip.sha256, clip.length) in seen:
            s.cached += 1
        elif student_frames(clip.length) < 1:
            rejects.append((clip, f"too short: {clip.length} samples < {WINDOW} (no student frame)"))
        else:
            seen.add((clip.sha256, clip.length))
            todo.append(clip)
    return todo, rejects


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
) -> LabelSummary:
    """Label manifest rows ``[start, stop)``, block ``shard_index`` of ``num_shards``, into ``labels_dir``.

    Returns:
        A :class:`LabelSummary`. Unreadable / truncated / non-finite audio and clips too short for
        one student frame are listed in the range's ``label_rejects*.csv`` and skipped. With ``usage``, the
        code usage of every clip of the corpus labelled in the store so far (all ranges) is computed after the
        run (not counted in ``wall_seconds``) and written to the store's ``usage.json``.

    Raises:
        UntrainableLabels: with ``usage``, a codebook uses a single code (the labels stay on disk, so a rerun
            computes nothing) and ``allow_single_code`` is false; with it true, the store is accepted with a
            loud warning and ``usage.json`` records ``single_code_allowed`` for ``mert pretrain``.
    """
    t0 = time.perf_counter()
    corpus = Corpus(corpus_dir, verify=False)  # a bad shard rejects its clips, not the run
    if corpus.sample_rate != teacher.sample_rate:
        raise TeacherError(f"corpus at {corpus.sample_rate} Hz but teacher {teacher.name} needs {teacher.sample_rate}")
    clips, rows = select_range(corpus.clips, shard_index, num_shards, start, stop)
    store = LabelStore.create(labels_dir, teacher.key, teacher.identity())
    for d in (store.root / CLIP_DIR).glob("*"):
        remove_stale_tmp(d)
    s = LabelSummary(teacher=teacher.key, store=str(store.root), rows=rows, clips=len(clips))
    todo, rejects = _split_todo(store, clips, s)
    dev = resolve_device(device)
    teacher.to(dev)
    windows = [w for i, c in enumerate(todo) for w in _plan(i, c.length, teacher)]
    windows.sort(key=lambda w: -w.length)  # similar lengths per batch: little padding
    s.windows = len(windows)
    with ThreadPoolExecutor(2, thread_name_prefix="label-write") as pool:
        asm = _Assembler(store, todo, windows, corpus.sample_rate, pool)
        try:
            _encode_all(corpus, todo, windows, teacher, asm, s, batch_size, dev, progress)
        finally:
            asm.drain()
    rejects += [(todo[i], r) for i, r in asm.rejected.items()]
    s.computed = len(todo) - len(asm.rejected)
    s.computed_seconds = sum(c.length for i, c in enumerate(todo) if i not in asm.rejected) / corpus.sample_rate
    s.rejected = len(rejects)
    for _, reason in rejects:
        key = reason.split(":")[0]
        s.reasons[key] = s.reasons.get(key, 0) + 1
    whole = (rows[0], rows[1]) == (0, len(corpus.clips))
    s.rejects_csv = str(_write_rejects(store.root, rows, whole, rejects))
    s.wall_seconds = time.perf_counter() - t0
    if usage:
        t1 = time.perf_counter()
        s.usage = store.write_usage(corpus.clips, teacher.codebook_size, single_code_allowed=allow_single_code)
        s.usage_seconds = time.perf_counter() - t1
        try:
            check_code_usage(s.usage, allow_single_code, "mert label")
        except UntrainableLabels as e:
            e.summary = s  # what was labelled, for the caller's report
            raise
    return s


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


def _encode_all(corpus, todo, windows, teacher, asm: _Assembler, s: LabelSummary, batch_size, dev, progress) -> None:
    from tqdm import tqdm

    total = sum(c.length for c in todo) / corpus.sample_rate
    bar = tqdm(total=round(total, 1), unit="s", desc=f"label {teacher.name}", disable=not progress or not todo)
    events = _prefetch(_batches(corpus, todo, windows, batch_size, pin=dev.type == "cuda"))
    with bar, contextlib.closing(events):
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
