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
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mert.data.shards import Clip, Corpus
from mert.teachers.base import HOP
from mert.train.labels import LabelSource
from mert.utils.io import sha256_json


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
        clips: list[Clip] | None = None,
    ):
        self.corpus, self.labels = corpus, labels
        self.crop_samples, self.micro, self.seed = crop_samples, micro_batch_clips, seed
        self.slots = world_size * grad_accum
        pool = corpus.clips if clips is None else clips
        self.clips: list[Clip] = [c for c in pool if c.length >= max(min_clip_samples, 400)]
        if not self.clips:
            raise ValueError(f"no clip of the corpus {corpus.root} is at least {min_clip_samples} samples long")
        self._perms: dict[int, np.ndarray] = {}

    @property
    def step_clips(self) -> int:
        """Clips per optimiser step over all ranks."""
        return self.micro * self.slots

    def fingerprint(self) -> str:
        """Hash of what defines the stream (clips, seed, sizes): resume refuses a different one."""
        ids = [c.id for c in self.clips]
        return sha256_json([ids, self.seed, self.crop_samples, self.micro, self.slots])

    def stream(self) -> dict[str, Any]:
        """The fields the stream depends on, by name (stored in checkpoints so a mismatch can be named)."""
        ids = [c.id for c in self.clips]
        return {
            "clips": sha256_json(ids),
            "n_clips": len(ids),
            "seed": self.seed,
            "crop_samples": self.crop_samples,
            "micro_batch_clips": self.micro,
            "slots": self.slots,
        }

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 4:  # a step spans at most a few epochs: keep the cache small
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.clips))
        return self._perms[epoch]

    def positions(self, step: int, slot: int) -> list[int]:
        """Stream positions of ``slot`` at ``step``."""
        base = step * self.step_clips
        return [base + slot + k * self.slots for k in range(self.micro)]

    def clip_at(self, position: int) -> Clip:
        n = len(self.clips)
        return self.clips[int(self._perm(position // n)[position % n])]

    def batch(self, step: int, slot: int) -> Batch:
        """The cropped, labelled micro-batch of ``slot`` at optimiser step ``step``."""
        pos = self.positions(step, slot)
        clips = [self.clip_at(p) for p in pos]
        length = min(self.crop_samples, min(c.length for c in clips)) // HOP * HOP  # (B, L) crop, whole frames
        wavs, labs = [], []
        for p, clip in zip(pos, clips):
            u = np.random.default_rng([self.seed, 1, p]).random()
            start = HOP * int(u * ((clip.length - length) // HOP + 1))
            wavs.append(self.corpus.audio(clip, start, length))
            labs.append(self.labels.crop(clip, start, length).astype(np.int64))
        wav = torch.from_numpy(np.stack(wavs))  # (B, L)
        labels = torch.from_numpy(np.stack(labs))  # (B, K, T)
        return Batch(wav=wav, labels=labels, clip_ids=[c.id for c in clips], step=step, slot=slot)


def holdout_split(clips: list[Clip], n_val: int, min_samples: int, seed: int) -> tuple[list[Clip], list[Clip]]:
    """Hold ``n_val`` clips out of training for validation (a seeded choice among the clips long enough to crop).

    Args:
        clips: the corpus clips.
        n_val: clips to hold out (0: no split, both lists are ``clips``).
        min_samples: only clips at least this long are eligible (shorter ones are never sampled anyway).
        seed: the data seed.

    Returns:
        ``(train, val)``, each in corpus order.

    Raises:
        ValueError: fewer than ``n_val + 1`` eligible clips (training would have none).
    """
    if n_val <= 0:
        return list(clips), list(clips)
    eligible = [i for i, c in enumerate(clips) if c.length >= max(min_samples, 400)]
    if n_val >= len(eligible):
        raise ValueError(f"cannot hold out {n_val} validation clips: only {len(eligible)} clips are long enough")
    held = {eligible[j] for j in np.random.default_rng([seed, 3]).permutation(len(eligible))[:n_val]}
    return [c for i, c in enumerate(clips) if i not in held], [c for i, c in enumerate(clips) if i in held]


class PretrainLoader:
    """Iterates one rank's micro-batches from a data position, preparing ``prefetch`` ahead in a thread.

    Each item is the list of ``grad_accum`` micro-batches of one optimiser step for this rank.
    ``state_dict()`` is the next step to deliver; ``load_state_dict`` restarts there.
    """

    def __init__(self, sampler: CropSampler, rank: int = 0, world_size: int = 1, prefetch: int = 2):
        self.sampler, self.rank, self.world = sampler, rank, world_size
        self.accum = sampler.slots // world_size
        self.prefetch = prefetch
        self.next_step = 0

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
        if self.prefetch > 0:
            yield from self._threaded()
            return
        while True:
            batches = self.step_batches(self.next_step)
            self.next_step += 1
            yield batches

    def _threaded(self) -> Iterator[list[Batch]]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        start = self.next_step

        def work() -> None:
            step = start
            try:
                while not stop.is_set():
                    item = self.step_batches(step)
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


def loader_throughput(loader: PretrainLoader, n_steps: int = 20) -> dict[str, float]:
    """Headroom of the loader alone: steps/s, micro-batches/s and audio seconds/s it can deliver (no prefetch)."""
    t0 = time.perf_counter()
    seconds = 0.0
    for step in range(n_steps):
        seconds += sum(b.seconds for b in loader.step_batches(step))
    dt = time.perf_counter() - t0
    return {
        "steps_per_sec": n_steps / dt,
        "batches_per_sec": n_steps * loader.accum / dt,
        "audio_sec_per_sec": seconds / dt,
    }
