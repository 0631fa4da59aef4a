"""Code-usage statistics of teacher labels: how much information a label set can carry.

A teacher whose codebook puts most frames on one code (or uses few codes) gives the student little to learn,
and a student that only learns the code frequencies reaches exactly the majority share as its masked accuracy.
These numbers are printed by ``mert label``, stored beside the labels and logged with every pretraining run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class CodeUsage:
    """Usage of one codebook over a set of frames.

    Attributes:
        codebook: index k of the codebook.
        codebook_size: number of classes C.
        frames: frames counted.
        distinct: codes used at least once.
        entropy_bits: entropy of the code histogram, in bits (``log2(C)`` at most).
        top_code: the most frequent code.
        top_share: its share of the frames: the masked accuracy of a student that always predicts it
            (the "majority-class rate").
    """

    codebook: int
    codebook_size: int
    frames: int
    distinct: int
    entropy_bits: float
    top_code: int
    top_share: float

    def as_dict(self) -> dict:
        return asdict(self)


def code_histograms(codes: Iterable[np.ndarray], codebook_size: int) -> np.ndarray:
    """Per-codebook code counts over clips.

    Args:
        codes: arrays of shape (K, T_i) (one per clip) with integer codes in ``[0, codebook_size)``.
        codebook_size: C.

    Returns:
        (K, C) int64 counts.

    Raises:
        ValueError: clips with different K, or a code outside ``[0, codebook_size)``.
    """
    hist = None
    for c in codes:
        c = np.asarray(c)
        if c.ndim != 2:
            raise ValueError(f"codes must be (codebooks, frames), got shape {c.shape}")
        if hist is None:
            hist = np.zeros((c.shape[0], codebook_size), np.int64)
        elif c.shape[0] != hist.shape[0]:
            raise ValueError(f"clips have {hist.shape[0]} and {c.shape[0]} codebooks")
        if c.size and (int(c.min()) < 0 or int(c.max()) >= codebook_size):
            raise ValueError(f"code {int(c.max())} outside [0, {codebook_size})")
        for k in range(c.shape[0]):
            hist[k] += np.bincount(c[k].astype(np.int64), minlength=codebook_size)
    if hist is None:
        raise ValueError("no codes to count")
    return hist


def usage_from_histograms(hist: np.ndarray) -> list[CodeUsage]:
    """:class:`CodeUsage` per codebook from (K, C) counts."""
    out = []
    for k, h in enumerate(np.asarray(hist)):
        n = int(h.sum())
        p = h[h > 0] / max(n, 1)
        out.append(
            CodeUsage(
                codebook=k,
                codebook_size=int(h.shape[0]),
                frames=n,
                distinct=int((h > 0).sum()),
                entropy_bits=float(-(p * np.log2(p)).sum()) if n else 0.0,
                top_code=int(h.argmax()),
                top_share=float(h.max() / n) if n else 0.0,
            )
        )
    return out


def code_usage(codes: Iterable[np.ndarray], codebook_size: int) -> list[CodeUsage]:
    """Per-codebook usage of a label set: ``usage_from_histograms(code_histograms(codes, C))``."""
    return usage_from_histograms(code_histograms(codes, codebook_size))
