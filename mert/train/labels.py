"""Where the trainer gets teacher labels: a small seam over the label store.

A label source returns, for a clip and a crop, the (K, T) integer codes of the clean audio aligned to the
student's frames (``mert.teachers.base.crop_slice``). :func:`open_labels` opens the label store written by
``mert label`` (``mert.teachers.labels.LabelStore``); :class:`HashLabels` (deterministic pseudo-random codes
keyed by clip id, not learnable) and :class:`TeacherLabels` (a teacher run in memory over the corpus) serve
tests and offline demos when no store exists.

A store that cannot teach is refused when it is opened, before any training (:func:`check_store`): a codebook
that uses a single code over the corpus (``UntrainableLabels``, unless ``mert label --allow-single-code``
accepted the store), and codes outside ``[0, codebook size)`` (``LabelError`` naming the file, also checked on
every clip's first load).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mert.data.shards import Clip, Corpus
from mert.teachers.base import crop_slice, student_frames
from mert.utils.io import sha256_json

log = logging.getLogger(__name__)


class LabelSource(Protocol):
    """Per-crop teacher labels."""

    n_codebooks: int
    codebook_size: int

    def crop(self, clip: Clip, start: int, length: int) -> np.ndarray:
        """(K, student_frames(length)) integer codes of ``clip[start:start+length]``; start % 320 == 0."""

    def identity(self) -> dict[str, Any]:
        """What produced the labels (logged as the teacher identity)."""


class HashLabels:
    """Deterministic pseudo-random codes per clip (a stand-in with the store's shape; carries no signal).

    Args:
        n_codebooks: K.
        codebook_size: codes per codebook.
        seed: mixed into each clip's stream.
    """

    def __init__(self, n_codebooks: int = 8, codebook_size: int = 1024, seed: int = 0):
        self.n_codebooks, self.codebook_size, self.seed = n_codebooks, codebook_size, seed

    def crop(self, clip: Clip, start: int, length: int) -> np.ndarray:
        digest = hashlib.sha256(f"{self.seed}:{clip.id}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        full = rng.integers(0, self.codebook_size, (self.n_codebooks, student_frames(clip.length)), dtype=np.uint16)
        return full[:, crop_slice(start, length)]

    def identity(self) -> dict[str, Any]:
        ident = {"name": "hash", "n_codebooks": self.n_codebooks, "codebook_size": self.codebook_size}
        ident["seed"] = self.seed
        return {**ident, "hash": sha256_json(ident)}


class TeacherLabels:
    """Labels computed once, in memory, by a teacher over every clip of a corpus (offline demos, tests).

    Args:
        teacher: a ``mert.teachers.base.TargetExtractor`` (e.g. ``build_debug_rvq_extractor()``).
        corpus: the corpus to label.
        clips: only these clips (default: all).
    """

    def __init__(self, teacher, corpus: Corpus, clips: list[Clip] | None = None):
        import torch

        self.n_codebooks, self.codebook_size = teacher.n_codebooks, teacher.codebook_size
        self._identity = teacher.identity()
        self._codes: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for clip in clips if clips is not None else corpus.clips:
                wav = torch.from_numpy(corpus.audio(clip))[None]  # (1, L)
                codes = teacher.encode(wav, torch.tensor([clip.length]))[0]  # (K, F)
                self._codes[clip.id] = codes[:, : student_frames(clip.length)].numpy().astype(np.uint16)

    def crop(self, clip: Clip, start: int, length: int) -> np.ndarray:
        return self._codes[clip.id][:, crop_slice(start, length)]

    def identity(self) -> dict[str, Any]:
        return self._identity


def open_labels(labels_dir: str | Path, corpus: Corpus) -> LabelSource:
    """Open the label store ``labels_dir`` written by ``mert label`` for ``corpus``.

    ``labels_dir`` may also be ``hash:K:C`` for :class:`HashLabels` (tests) or ``teacher:random`` for the seeded
    random-projection RVQ teacher computed in memory.
    """
    spec = str(labels_dir)
    if spec.startswith("hash:"):
        k, c = (int(v) for v in spec.split(":")[1:3])
        return HashLabels(k, c)
    if spec == "teacher:random":
        from mert.teachers.rvq import build_debug_rvq_extractor

        return TeacherLabels(build_debug_rvq_extractor(), corpus)
    return _open_store(Path(labels_dir), corpus)


def _open_store(path: Path, corpus: Corpus) -> LabelSource:
    from mert.teachers.labels import LabelStore  # the teachers' on-disk store (issue 3)

    if (path / "teacher.json").exists():
        return StoreLabels(LabelStore(path), corpus)
    return StoreLabels(LabelStore.open(path), corpus)


class StoreLabels:
    """Adapter over ``mert.teachers.labels.LabelStore`` (``LABELS_DIR`` or ``LABELS_DIR/<teacher key>``).

    Raises:
        UntrainableLabels: see :func:`check_store` (``check=False`` skips it, for inspection tools).
        LabelError: a label file with codes outside the codebook, or that does not match its clip.
    """

    def __init__(self, store, corpus: Corpus, check: bool = True):
        self._store, self._rate = store, corpus.sample_rate
        self.n_codebooks = store.n_codebooks
        self.codebook_size = store.codebook_size
        self.usage = check_store(store, corpus) if check else None

    def crop(self, clip: Clip, start: int, length: int) -> np.ndarray:
        return self._store.crop(clip, start, length, self._rate)

    def identity(self) -> dict[str, Any]:
        return dict(self._store.identity)


def check_store(store, corpus: Corpus) -> dict[str, Any]:
    """Refuse a label store that cannot teach; return its code usage over the corpus's labelled clips.

    The usage comes from the store's ``usage.json`` (written by ``mert label``) when it counts exactly the clips
    of ``corpus`` labelled in the store (one bulk match of the store against the corpus's columns: the record
    index and one stat per pack record, reading only records changed since the index; no file per clip) and the
    store's codebook size; otherwise it is recomputed here from every labelled clip, which also checks every code
    against the codebook size.

    Args:
        store: the ``LabelStore``.
        corpus: the corpus the trainer will read.

    Returns:
        The ``LabelStore.usage`` dict.

    Raises:
        UntrainableLabels: a codebook uses a single code and ``mert label --allow-single-code`` did not accept
            the store (accepted: a loud warning instead).
        LabelError: (recomputed usage) a label file with codes outside ``[0, size)`` or not matching its clip.
    """
    from mert.teachers.label_run import check_code_usage

    saved = store.read_usage() or {}
    fresh = saved.get("codebook_size") == store.codebook_size and saved.get("clips") == store.labelled_keys(corpus)
    usage = saved if fresh and saved.get("codebooks") else _recount(store, corpus)
    check_code_usage(usage, bool(saved.get("single_code_allowed")), "mert pretrain")
    return usage


def _recount(store, corpus: Corpus) -> dict[str, Any]:
    """``LabelStore.usage`` over ``corpus``, but every load error (out-of-range codes included) is raised."""
    log.info("label store %s: counting the codes of the corpus's labelled clips (no current usage.json)", store.key)
    return store.usage(corpus, store.codebook_size, strict=True)
