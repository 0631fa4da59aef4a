"""Teacher base class and the label/student frame alignment rule.

**Alignment.** The student's conv front end (7 layers, total stride 320, receptive field 400
samples) maps ``L`` samples to ``T = floor((L - 400) / 320) + 1`` frames; student frame ``i``
covers samples ``[320 i, 320 i + 400)``. EnCodec at 24 kHz gives ``ceil(L / 320)`` codec frames,
codec frame ``j`` ending at sample ``320 (j + 1)``; the reference pairs label frame ``i`` with
student frame ``i`` and trims the labels to the student count (5 s: 375 codec -> 374 student
frames; 5.12 s: 384 -> 383; 30 s: 2250 -> 2249).

Labels are computed for **whole clips** and stored trimmed to ``student_frames(clip.length)``.
A training crop starting at sample ``s = 320 m`` with ``length`` samples uses label frames
``m .. m + T - 1`` with ``T = student_frames(length)``; :func:`crop_slice` computes that slice and
rejects starts that are not multiples of 320 (those would shift every label by a fraction of a
frame). Every kept label frame depends only on real samples of the clip: the last student frame
ends at ``320 (T - 1) + 400 <= L`` and the causal codec frame ``T - 1`` ends at ``320 T <= L``.
"""

from __future__ import annotations

import abc
import hashlib
from typing import Any

import torch
from torch import nn

from mert.utils.io import sha256_json

HOP = 320
"""Student frame hop in samples (75 Hz at 24 kHz)."""
WINDOW = 400
"""Student receptive field in samples."""
LABEL_FORMAT_VERSION = 1
"""Bumped when the stored label layout or the windowing of the teachers changes."""


class TeacherError(RuntimeError):
    """A teacher cannot be built (missing weights, bad config) or cannot label an input."""


def student_frames(n_samples: int) -> int:
    """Frames the student's conv front end produces for ``n_samples`` samples (0 if shorter than 400)."""
    return 0 if n_samples < WINDOW else (n_samples - WINDOW) // HOP + 1


def crop_slice(start: int, length: int) -> slice:
    """Label frames of a crop ``[start, start + length)`` of a clip whose labels cover the whole clip.

    Args:
        start: first sample of the crop; must be a multiple of :data:`HOP`.
        length: crop length in samples.

    Returns:
        ``slice(start // 320, start // 320 + student_frames(length))``.
    """
    if start % HOP:
        raise ValueError(f"crop start {start} is not a multiple of {HOP} samples: labels would be misaligned")
    m = start // HOP
    return slice(m, m + student_frames(length))


def module_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TargetExtractor(nn.Module, abc.ABC):
    """A frozen teacher mapping waveforms to discrete labels at the student frame rate.

    Subclasses set ``name``, ``n_codebooks``, ``codebook_size``, ``sample_rate``, the context
    (in frames) a window needs on each side for its kept frames to match whole-clip labelling,
    and implement :meth:`encode`. They are always in eval mode with gradients off.
    """

    name: str = "teacher"
    n_codebooks: int = 1
    codebook_size: int = 1
    sample_rate: int = 24_000
    left_context_frames: int = 0
    right_context_frames: int = 0
    chunk_frames: int = 2250
    """Kept frames per window when a long clip is labelled in windows (30 s at 75 Hz)."""

    def freeze(self) -> TargetExtractor:
        """Eval mode, no gradients; returns ``self``."""
        super().train(False)
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> TargetExtractor:
        """Teachers never train: ``train(True)`` is ignored."""
        return super().train(False)

    @abc.abstractmethod
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Label a right-zero-padded batch.

        Args:
            wav: (B, S) float32 at ``sample_rate``.
            lengths: (B,) valid samples per row.

        Returns:
            (B, K, F) int64 codes in ``[0, codebook_size)``; frame ``j`` is aligned with student frame
            ``j`` of the row (it covers samples ``[320 j, 320 j + 400)``), and
            ``F >= student_frames(lengths.max())``. Frames past a row's own student count are garbage.
        """

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Every setting that changes the labels (JSON-serialisable)."""

    @abc.abstractmethod
    def weights_sha256(self) -> str:
        """Hash of the weights / fitted model that produce the labels."""

    def identity(self) -> dict[str, Any]:
        """What produced the labels: ``{name, config, weights_sha256, format, hash}``; ``hash`` keys the cache."""
        ident = {
            "name": self.name,
            "config": self.config(),
            "weights_sha256": self.weights_sha256(),
            "format": LABEL_FORMAT_VERSION,
        }
        return {**ident, "hash": sha256_json(ident)}

    @property
    def key(self) -> str:
        """Directory name of this teacher's labels: ``<name>-<first 12 hex of the identity hash>``."""
        return f"{self.name}-{self.identity()['hash'][:12]}"
