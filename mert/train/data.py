"""Deterministic, resumable crop batches over an ingested corpus and its teacher labels.

The stream of clips is the concatenation of per-epoch permutations of the eligible clips (length >=
``min_clip_samples``), each seeded by ``(seed, epoch)``. Optimiser step ``s`` consumes stream positions
``[s * B, (s + 1) * B)`` with ``B = micro_batch_clips * world_size * grad_accum``. These are dealt to
``slots = world_size * grad_accum`` slots: slot ``w = micro * world_size + rank`` takes every ``slots``-th
position starting at ``w`` (with one micro-batch per step, rank ``r`` takes every world-th sample). Single-process
accumulation over 2 micro-batches therefore sees exactly what 2 ranks see, which makes the two runs equal.

Each slot's batch is cropped as in the reference (``pad_audio: false``): every clip to
``min(crop_samples, shortest clip in the batch)`` samples (rounded down to whole 320-sample frames), at a random
start aligned to 320 samples so the teacher labels stay frame-aligned. Crop starts depend only on
``(seed, stream position)``, so the data position is just the step counter.

Loading (:class:`PretrainLoader`): a micro-batch is a pure function of ``(step, slot)``, so it can be built
anywhere. ``workers = 0`` builds them in one background thread (``prefetch`` steps ahead); ``workers > 0`` in
that many processes (a ``torch.utils.data.DataLoader`` over the micro-batch index ``step * grad_accum + micro``,
which hands them back in index order). Each process reads the crops' audio from the memory-mapped shards and their
labels from the label store in the same call, straight into (shared-memory) tensors: one copy per crop, and no
per-step work that grows with the corpus (the epoch permutation is built once per epoch and process). The order, the
content and the resume point (``state_dict``: the next step to deliver) are the same for any worker count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data

from mert.data.shards import Clip, Corpus
from mert.data.table import ClipList
from mert.teachers.base import HOP, student_frames
from mert.train.labels import LabelSource


@dataclass
class Batch:
    """One micro-batch for one rank.

    Attributes:
        wav: (B, L) float32 clean audio, L a multiple of 320.
        labels: (B, K, T) int64 teacher codes, T = student frames of L.
        clip_ids: the clips, for debugging.
        step: optimiser step this batch belongs to.
        slot: ``micro * world_size + rank``.
    """

    wav: torch.Tensor
    labels: torch.Tensor
    clip_ids: list[str]
    step: int
    slot: int

    @property
    def seconds(self) -> float:
        return self.wav.numel() / 24_000

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory (what ``DataLoader(pin_memory=True)`` calls), for async H2D copies."""
        return dataclasses.replace(self, wav=self.wav.pin_memory(), labels=self.labels.pin_memory())


class CropSampler:
    """Maps (step, slot) to a cropped, labelled batch. Stateless apart from the caches; see the module docstring.

    Args:
        corpus: the ingested corpus.
        labels: the teacher labels.
        crop_samples: maximum crop length (multiple of 320).
        min_clip_samples: shorter clips are dropped.
        micro_batch_clips: clips per slot.
        world_size: ranks.
        grad_accum: micro-batches per rank per step.
        seed: data seed.
        clips: sample only these clips of the corpus (default: all; see :func:`holdout_split`).
    """

    def __init__(
        self,
        corpus: Corpus,
        labels: LabelSource,
        crop_samples: int,
        min_clip_samples: int,
        micro_batch_clips: int,
        world_size: int = 1,
        grad_accum: int = 1,
        seed: int = 0,
        clips: Sequence[Clip] | None = None,
    ):
        self.corpus, self.labels = corpus, labels
        self.crop_samples, self.micro, self.seed = crop_samples, micro_batch_clips, seed
        self.slots = world_size * grad_accum
        rows = _rows_of(corpus, clips)
        length = np.asarray(corpus.table.length)
        self.rows = rows[length[rows] >= max(min_clip_samples, 400)]  # (N,) table rows of the eligible clips
        if not self.rows.size:
            raise ValueError(f"no clip of the corpus {corpus.root} is at least {min_clip_samples} samples long")
        self._perms: dict[int, np.ndarray] = {}
        self._fingerprint: str | None = None
        self._ids_sha: str | None = None

    @property
    def clips(self) -> ClipList:
        """The eligible clips (a :class:`mert.data.table.ClipList`: made on access)."""
        return self.corpus.clips.subset(self.rows)

    @property
    def step_clips(self) -> int:
        """Clips per optimiser step over all ranks."""
        return self.micro * self.slots

    def _ids_json(self) -> bytes:
        """``json.dumps`` of the eligible clip ids (``["a1...", "b2..."]``), built from the id column."""
        ids = np.asarray(self.corpus.table.id)[self.rows].tolist()  # bytes, 16 hex digits each: no escaping
        return b'["' + b'", "'.join(ids) + b'"]' if ids else b"[]"

    def fingerprint(self) -> str:
        """Hash of what defines the stream (clips, seed, sizes): resume refuses a different one.

        Equal to ``sha256_json([ids, seed, crop_samples, micro, slots])``, computed from the table's id column
        (about 0.2 s per 10^6 clips, once per sampler).
        """
        if self._fingerprint is None:
            tail = f", {self.seed}, {self.crop_samples}, {self.micro}, {self.slots}]".encode()
            self._fingerprint = hashlib.sha256(b"[" + self._ids_json() + tail).hexdigest()
        return self._fingerprint

    def stream(self) -> dict[str, Any]:
        """The fields the stream depends on, by name (stored in checkpoints so a mismatch can be named)."""
        if self._ids_sha is None:
            self._ids_sha = hashlib.sha256(self._ids_json()).hexdigest()  # == sha256_json(ids)
        return {
            "clips": self._ids_sha,
            "n_clips": int(self.rows.size),
            "seed": self.seed,
            "crop_samples": self.crop_samples,
            "micro_batch_clips": self.micro,
            "slots": self.slots,
        }

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 4:  # a step spans at most a few epochs: keep the cache small
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.rows.size)
        return self._perms[epoch]

    def positions(self, step: int, slot: int) -> list[int]:
        """Stream positions of ``slot`` at ``step``."""
        base = step * self.step_clips
        return [base + slot + k * self.slots for k in range(self.micro)]

    def row_at(self, position: int) -> int:
        """The table row of stream position ``position``."""
        n = self.rows.size
        return int(self.rows[self._perm(position // n)[position % n]])

    def clip_at(self, position: int) -> Clip:
        return self.corpus.clips[self.row_at(position)]

    def crop_start(self, position: int, clip_length: int, length: int) -> int:
        """The crop's first sample: uniform over the 320-aligned starts, seeded by ``(seed, position)``."""
        u = np.random.default_rng([self.seed, 1, position]).random()
        return HOP * int(u * ((clip_length - length) // HOP + 1))

    def layout(self, step: int, slot: int) -> tuple[list[int], list[Clip], int]:
        """``(stream positions, clips, crop length L)`` of a micro-batch: every clip is cropped to
        ``min(crop_samples, shortest clip)`` rounded down to whole 320-sample frames.
        """
        pos = self.positions(step, slot)
        clips = [self.clip_at(p) for p in pos]
        return pos, clips, min(self.crop_samples, min(c.length for c in clips)) // HOP * HOP

    def fill(self, positions: list[int], clips: list[Clip], length: int, wav: np.ndarray, labels: np.ndarray) -> None:
        """Write the crops' audio and labels into ``wav`` (B, L) float32 and ``labels`` (B, K, T) int64, in place.

        The audio is copied once, from the shard's memory map (dequantised if int16); the labels of the same crop
        are read next to it.

        Raises:
            ValueError: the label source returned a crop of another shape than ``(K, student_frames(L))``.
        """
        for i, (p, clip) in enumerate(zip(positions, clips)):
            start = self.crop_start(p, clip.length, length)
            self.corpus.read(clip.shard, clip.offset + start, length, out=wav[i])
            lab = self.labels.crop(clip, start, length)  # (K, T) codes of the same crop
            if lab.shape != labels.shape[1:]:
                raise ValueError(
                    f"labels of clip {clip.id} ({clip.source}) for samples [{start}, {start + length}): shape "
                    f"{lab.shape}, expected {labels.shape[1:]} (codebooks, student frames)"
                )
            labels[i] = lab

    def batch(self, step: int, slot: int) -> Batch:
        """The cropped, labelled micro-batch of ``slot`` at optimiser step ``step`` (see :meth:`fill`)."""
        pos, clips, length = self.layout(step, slot)
        wav = torch.empty((len(clips), length))  # (B, L)
        labels = torch.empty((len(clips), self.labels.n_codebooks, student_frames(length)), dtype=torch.int64)
        self.fill(pos, clips, length, wav.numpy(), labels.numpy())
        return Batch(wav=wav, labels=labels, clip_ids=[c.id for c in clips], step=step, slot=slot)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a loader process (spawn/forkserver): the corpus travels as its path and reopens its memory
        maps there (a pickled ``np.memmap`` would carry its whole file); the epoch permutations are rebuilt.
        """
        return {**self.__dict__, "_perms": {}}


def _rows_of(corpus: Corpus, clips: Sequence[Clip] | None) -> np.ndarray:
    """Table rows of ``clips`` (a ``ClipList`` of ``corpus``, or any sequence of its clips; None: all)."""
    if clips is None:
        return np.arange(corpus.table.n, dtype=np.int64)
    if isinstance(clips, ClipList) and clips.table is corpus.table:
        return clips.rows.copy()
    where = {(c.shard, c.offset): i for i, c in enumerate(corpus.clips)}  # small lists (tests, tools)
    try:
        return np.array([where[(c.shard, c.offset)] for c in clips], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"clip at {e.args[0]} is not in the corpus {corpus.root}") from e


def holdout_split(
    clips: Sequence[Clip], n_val: int, min_samples: int, seed: int
) -> tuple[Sequence[Clip], Sequence[Clip]]:
    """Hold ``n_val`` clips out of training for validation (a seeded choice among the clips long enough to crop).

    Args:
        clips: the corpus clips (a ``ClipList``: the split is computed on its columns, and lists come back as
            ``ClipList`` views; a plain list gives lists).
        n_val: clips to hold out (0: no split, both are ``clips``).
        min_samples: only clips at least this long are eligible (shorter ones are never sampled anyway).
        seed: the data seed.

    Returns:
        ``(train, val)``, each in corpus order.

    Raises:
        ValueError: fewer than ``n_val + 1`` eligible clips (training would have none).
    """
    if n_val <= 0:
        return clips, clips
    lengths = clips.column("length") if isinstance(clips, ClipList) else np.array([c.length for c in clips])
    eligible = np.flatnonzero(lengths >= max(min_samples, 400))
    if n_val >= len(eligible):
        raise ValueError(f"cannot hold out {n_val} validation clips: only {len(eligible)} clips are long enough")
    held = np.zeros(len(lengths), bool)
    held[eligible[np.random.default_rng([seed, 3]).permutation(len(eligible))[:n_val]]] = True
    if isinstance(clips, ClipList):
        return clips.subset(clips.rows[~held]), clips.subset(clips.rows[held])
    return [c for c, h in zip(clips, held) if not h], [c for c, h in zip(clips, held) if h]


class PretrainLoader:
    """Iterates one rank's micro-batches from a data position, built ahead of the step.

    Each item is the list of ``grad_accum`` micro-batches of one optimiser step for this rank.
    ``state_dict()`` is the next step to deliver; ``load_state_dict`` restarts there. What is delivered does not
    depend on ``workers`` or ``prefetch``: only how it is built (see the module docstring).

    Args:
        sampler: the crop sampler (defines the stream).
        rank: this process's rank.
        world_size: ranks.
        prefetch: ``workers == 0``: steps a background thread builds ahead (0: build in the caller, no thread);
            ``workers > 0``: micro-batches each process builds ahead (``DataLoader``'s ``prefetch_factor``, >= 1).
        workers: loader processes (``torch.utils.data.DataLoader`` workers); 0: the thread (or the caller).
        pin_memory: deliver page-locked tensors (for ``.to(cuda, non_blocking=True)``).
    """

    def __init__(
        self,
        sampler: CropSampler,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        if workers < 0 or prefetch < 0:
            raise ValueError(f"loader workers and prefetch must be >= 0, got {workers} and {prefetch}")
        self.sampler, self.rank, self.world = sampler, rank, world_size
        self.accum = sampler.slots // world_size
        self.prefetch, self.workers, self.pin_memory = prefetch, workers, pin_memory
        self.next_step = 0
        self._ring: _Ring | None = None  # the last iteration's slots (workers > 0)

    def step_batches(self, step: int) -> list[Batch]:
        """This rank's micro-batches of ``step``."""
        return [self.sampler.batch(step, m * self.world + self.rank) for m in range(self.accum)]

    def state_dict(self) -> dict[str, Any]:
        return {"next_step": self.next_step, "fingerprint": self.sampler.fingerprint(), "stream": self.sampler.stream()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the checkpoint's step; ``RuntimeError`` naming the field if the stream is not the same one."""
        if state["fingerprint"] != self.sampler.fingerprint():
            raise RuntimeError(
                f"the data stream changed since the checkpoint: {stream_changes(state.get('stream'), self.sampler)}; "
                "resuming would not continue the same data order"
            )
        self.next_step = int(state["next_step"])

    def __iter__(self) -> Iterator[list[Batch]]:
        if self.workers > 0:
            ring, it = self._start_processes()

            def take(step: int) -> list[Batch]:
                return [ring.take(next(it), step * self.accum + m, self.pin_memory) for m in range(self.accum)]

            def stop() -> None:  # the processes stop now, not at garbage collection
                shutdown = getattr(it, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()

            yield from self._ahead(take, max(1, self.prefetch), stop)
        elif self.prefetch > 0:
            yield from self._ahead(lambda step: self._pinned(self.step_batches(step)), self.prefetch, None)
        else:
            while True:
                batches = self._pinned(self.step_batches(self.next_step))
                self.next_step += 1
                yield batches

    def _pinned(self, batches: list[Batch]) -> list[Batch]:
        return [b.pin_memory() for b in batches] if self.pin_memory else batches

    def _start_processes(self) -> tuple[_Ring, Iterator]:
        """``workers`` processes that build micro-batch ``i = step * accum + micro``, for ``i`` from the data
        position on, into shared-memory slots (:class:`_Ring`); the DataLoader hands them back in index order.

        Why slots: a fresh shared-memory tensor per micro-batch (what returning tensors from a DataLoader worker
        does) costs more than building the batch (page faults on new shared pages, a file descriptor passed per
        tensor); the slots are faulted in once and reused.
        """
        in_flight = self.workers * max(1, self.prefetch) + 1  # dispatched, plus the one being handed back
        held = 0 if self.pin_memory else (max(1, self.prefetch) + 3) * self.accum  # queued, being grouped, in use
        ring = self._ring = _Ring(self.sampler, self.rank, self.world, self.accum, in_flight + held + 1)
        loader = torch.utils.data.DataLoader(
            ring,
            batch_size=None,  # items are whole micro-batches
            sampler=_SlotIndices(self.next_step * self.accum, ring),
            num_workers=self.workers,
            prefetch_factor=max(1, self.prefetch),
            generator=torch.Generator().manual_seed(0),  # its base seed: never drawn from the trainer's global RNG
        )
        return ring, iter(loader)

    def _ahead(self, build, depth: int, on_close) -> Iterator[list[Batch]]:
        """Steps ``build(step)`` from the data position on, made ``depth`` ahead by a background thread.

        With loader processes the thread only takes finished batches out of their slots (copying them into
        page-locked memory when pinning), off the training thread.
        """
        q: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()
        start = self.next_step

        def work() -> None:
            step = start
            try:
                while not stop.is_set():
                    item = build(step)
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    step += 1
            except BaseException as e:  # surface loader errors in the training thread
                q.put(e)

        thread = threading.Thread(target=work, name="mert-loader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                self.next_step += 1
                yield item
        finally:
            stop.set()
            # Join, not just signal: a daemon thread still building tensors at interpreter exit can abort the
            # process ("terminate called without an active exception").
            thread.join(timeout=120)
            if on_close is not None:
                on_close()


class _Ring(torch.utils.data.Dataset):
    """Shared-memory slots that loader processes build micro-batches into.

    Micro-batch ``i`` of one rank's stream is step ``i // accum``, slot ``(i % accum) * world + rank`` of the
    sampler. The index the DataLoader sends to a process is ``(i, slot)``: :meth:`acquire` picks a free slot when the
    index is dispatched, and the slot stays taken until the batch built in it is released: right after it is copied
    out (``pin``: into page-locked memory), or, without ``pin``, when the last tensor viewing it is garbage collected
    (:class:`_Lease`: the batch is handed out without a copy). If no slot is free (a caller keeping many batches),
    the index carries slot -1 and the process returns ordinary tensors instead: slower, never wrong, never stuck.
    A stamp per slot (the index it holds, -1 while written) turns a protocol violation into an error.
    """

    def __init__(self, sampler: CropSampler, rank: int, world: int, accum: int, n_slots: int):
        self.sampler, self.rank, self.world, self.accum = sampler, rank, world, accum
        self.micro, self.k = sampler.micro, sampler.labels.n_codebooks
        frames = student_frames(sampler.crop_samples // HOP * HOP)
        self.wav = torch.zeros(n_slots, self.micro * sampler.crop_samples).share_memory_()
        self.labels = torch.zeros(n_slots, self.micro * self.k * frames, dtype=torch.int64).share_memory_()
        self.stamp = torch.full((n_slots,), -1, dtype=torch.int64).share_memory_()
        self._free = list(range(n_slots))  # main process only
        self._lock = threading.Lock()
        self.fallbacks = 0  # indices sent without a slot (main process)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock"], state["_free"] = None, []  # the free list lives in the main process
        return state

    def acquire(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            self.fallbacks += 1
            return -1

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def _views(self, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) audio and (B, K, T) label views of ``slot`` for crops of ``length`` samples."""
        frames = student_frames(length)
        wav = self.wav[slot, : self.micro * length].view(self.micro, length)
        return wav, self.labels[slot, : self.micro * self.k * frames].view(self.micro, self.k, frames)

    def __getitem__(self, index: tuple[int, int]) -> tuple[int, int, int, list[str]] | Batch:
        i, slot = index
        step, micro = divmod(i, self.accum)
        if slot < 0:
            return self.sampler.batch(step, micro * self.world + self.rank)
        self.stamp[slot] = -1
        pos, clips, length = self.sampler.layout(step, micro * self.world + self.rank)
        wav, labels = self._views(slot, length)
        self.sampler.fill(pos, clips, length, wav.numpy(), labels.numpy())
        self.stamp[slot] = i
        return i, slot, length, [c.id for c in clips]

    def take(self, item: tuple[int, int, int, list[str]] | Batch, want: int, pin: bool) -> Batch:
        """The batch of ``item`` (what :meth:`__getitem__` returned for index ``want``), out of its slot."""
        step, micro = divmod(want, self.accum)
        if isinstance(item, Batch):  # built without a slot
            if (item.step, item.slot) != (step, micro * self.world + self.rank):
                raise RuntimeError(f"loader returned (step, slot) {(item.step, item.slot)} for micro-batch {want}")
            return item.pin_memory() if pin else item
        i, slot, length, ids = item
        if i != want or int(self.stamp[slot]) != i:
            raise RuntimeError(f"loader slot {slot} holds micro-batch {int(self.stamp[slot])}, expected {want}")
        src_wav, src_labels = self._views(slot, length)
        if pin:
            wav = torch.empty(src_wav.shape, pin_memory=True).copy_(src_wav)
            labels = torch.empty(src_labels.shape, dtype=torch.int64, pin_memory=True).copy_(src_labels)
            if int(self.stamp[slot]) != i:  # overwritten while copied
                raise RuntimeError(f"loader slot {slot} was overwritten while micro-batch {i} was read from it")
            self.release(slot)
        else:
            hold = _Hold(self, slot)
            wav, labels = _Lease.tensor(src_wav, hold), _Lease.tensor(src_labels, hold)
        return Batch(wav=wav, labels=labels, clip_ids=ids, step=step, slot=micro * self.world + self.rank)


class _Hold:
    """Releases a ring slot when the last tensor viewing it is gone (CPython frees it at the last reference)."""

    def __init__(self, ring: _Ring, slot: int):
        weakref.finalize(self, ring.release, slot)


class _Lease:
    """An array-interface owner of a slot view: ``torch.from_numpy(np.asarray(lease))`` keeps it (and its
    :class:`_Hold`) alive for as long as any tensor shares that storage, views and slices included.
    """

    def __init__(self, view: torch.Tensor, hold: _Hold):
        self.view, self.hold = view, hold  # the view keeps the shared storage mapped
        self.__array_interface__ = view.numpy().__array_interface__

    @classmethod
    def tensor(cls, view: torch.Tensor, hold: _Hold) -> torch.Tensor:
        return torch.from_numpy(np.asarray(cls(view, hold)))


class _SlotIndices(torch.utils.data.Sampler):
    """``(i, slot)`` for ``i = start, start + 1, ...`` (endless: the trainer stops at ``max_steps``), each with a
    ring slot acquired when the DataLoader dispatches it.
    """

    def __init__(self, start: int, ring: _Ring):
        self.start, self.ring = start, ring

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, self.ring.acquire()) for i in itertools.count(self.start))


_STREAM_WORDS = {
    "clips": "training clips (ids, in corpus order)",
    "n_clips": "number of training clips",
    "seed": "data seed",
    "crop_samples": "crop_samples",
    "micro_batch_clips": "micro_batch_clips",
    "slots": "micro-batches per step over all ranks (world size x grad accumulation)",
}


def stream_changes(saved: dict[str, Any] | None, sampler: CropSampler) -> str:
    """``"data seed 1337 -> 7, crop_samples 9600 -> 4800"``: what differs between a checkpoint's stream and now."""
    if saved is None:  # a checkpoint written before the fields were stored
        return "its fingerprint differs (clips, seed, crop or batch sizes; the checkpoint predates named fields)"
    now = sampler.stream()
    parts = []
    for k, word in _STREAM_WORDS.items():
        if saved.get(k) != now[k]:
            old, new = saved.get(k), now[k]
            parts.append(f"{word} {old} -> {new}" if k != "clips" else f"{word} sha256 {str(old)[:12]} -> {new[:12]}")
    return ", ".join(parts) or "its fingerprint differs"


def loader_throughput(loader: PretrainLoader, n_steps: int = 20, warmup: int = 0) -> dict[str, float]:
    """What the loader alone delivers: steps/s, micro-batches/s and audio seconds/s.

    Iterates ``loader`` as the trainer does (its workers or thread, if any) from its data position: ``warmup``
    steps first (process start-up, page cache; timed apart as ``startup_sec``), then ``n_steps`` timed ones.
    """
    t0 = time.perf_counter()
    it = iter(loader)
    try:
        for _ in range(warmup):
            next(it)
        t1 = time.perf_counter()
        seconds = 0.0
        for _ in range(n_steps):
            seconds += sum(b.seconds for b in next(it))
        dt = time.perf_counter() - t1
    finally:
        it.close()
    return {
        "steps_per_sec": n_steps / dt,
        "batches_per_sec": n_steps * loader.accum / dt,
        "audio_sec_per_sec": seconds / dt,
        "startup_sec": t1 - t0,
    }
