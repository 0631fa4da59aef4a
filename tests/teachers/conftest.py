"""Tiny corpora written directly in the ingested format, a cheap counting teacher, one random EnCodec teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mert.data import shards as S
from mert.data.synth import write_corpus_arrays
from mert.teachers.base import TargetExtractor

SR = 24_000


def notes(n: int, rng: np.random.Generator, step: int = 3000) -> np.ndarray:
    """(n,) float32 music-like audio: a new harmonic note every ``step`` samples, noise bursts, a noise floor."""
    x = rng.normal(0, 0.01, n)
    t = np.arange(step) / SR
    for i in range(0, n, step):
        f0 = 55.0 * 2 ** (rng.integers(0, 48) / 12)
        amps = rng.uniform(0, 1, 6) / np.arange(1, 7)
        note = sum(a * np.sin(2 * np.pi * f0 * (h + 1) * t) for h, a in enumerate(amps))
        seg = note * np.exp(-t * rng.uniform(2, 20)) + (rng.random() < 0.3) * rng.normal(0, 0.3, step) * np.exp(-t * 40)
        x[i : i + step] += seg[: n - i]
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def make_corpus(
    root: Path, seconds: list[float], per_shard: int = 2, seed: int = 0, music: bool = False
) -> list[S.Clip]:
    """Write a corpus of noise+tone clips (or :func:`notes` when ``music``) of the given durations."""
    rng = np.random.default_rng(seed)

    def clips():
        for i, secs in enumerate(seconds):
            n = int(round(secs * SR))
            t = np.arange(n) / SR
            x = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + rng.normal(0, 0.05, n)).astype(np.float32)
            yield f"clip{i}.wav", notes(n, rng) if music else x, None

    write_corpus_arrays(root, clips(), SR, per_shard)
    return S.read_manifest(root)


class EnergyTeacher(TargetExtractor):
    """Cheap deterministic teacher: 2 codebooks from each student frame's RMS; counts ``encode`` calls."""

    name = "energy-test"
    n_codebooks = 2
    codebook_size = 64

    def __init__(self, fail_after: int | None = None, chunk_frames: int = 2250):
        super().__init__()
        self.calls = 0
        self.fail_after = fail_after
        self.chunk_frames = chunk_frames

    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        rms = wav.unfold(-1, 400, 320).pow(2).mean(-1).sqrt()  # (B, F)
        a = (rms * 200).long().clamp(0, 63)
        return torch.stack([a, (a * 7 + 3) % 64], dim=1)  # (B, 2, F)

    def config(self):
        return {"n_codebooks": 2, "scale": 200}

    def weights_sha256(self):
        return "0" * 64


@pytest.fixture(scope="session")
def rvq_teacher():
    """The seeded random-projection EnCodec teacher (built once: ~3 s)."""
    from mert.teachers.rvq import build_debug_rvq_extractor

    return build_debug_rvq_extractor(seed=0)
