"""Frame features of the k-means teacher, aligned with the student frames.

Frame ``i`` is the Hann-windowed slice ``[320 i, 320 i + 400)`` (exactly the student's receptive
field), zero-padded to a 1024-point FFT (23.4 Hz bins at 24 kHz), so ``F = student_frames(S)``.

* ``logmel``: log of an ``n_mels`` Slaney mel filterbank on the power spectrum.
* ``mfcc``: ``n_mfcc`` DCT-II (ortho) coefficients of ``logmel`` + deltas + delta-deltas (HuBERT's
  39-dim MFCC features for 13 coefficients). Deltas need 4 frames of context on each side.
* ``chroma``: power folded onto 12 pitch classes (C = 0) by a Gaussian-weighted filterbank over
  80 Hz .. 5 kHz, each frame divided by its maximum.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio.functional as AF

from mert.teachers.base import HOP, WINDOW, student_frames

N_FFT = 1024
DELTA_CONTEXT = 4  # frames each side that mfcc's deltas (win 5) of deltas read
CHROMA_FMIN, CHROMA_FMAX = 80.0, 5000.0


def feature_dim(name: str, n_mels: int, n_mfcc: int) -> int:
    return {"logmel": n_mels, "mfcc": 3 * n_mfcc, "chroma": 12}[name]


def power_frames(wav: torch.Tensor) -> torch.Tensor:
    """(B, S) -> (B, F, N_FFT // 2 + 1) power spectra of the student-aligned frames."""
    frames = wav.unfold(-1, WINDOW, HOP)  # (B, F, 400)
    window = torch.hann_window(WINDOW, periodic=False, dtype=wav.dtype, device=wav.device)
    return torch.fft.rfft(frames * window, n=N_FFT).abs().pow(2)  # (B, F, 513)


@functools.lru_cache(maxsize=8)
def _mel_fb(n_mels: int, sample_rate: int) -> torch.Tensor:
    return AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, "slaney", "slaney")


@functools.lru_cache(maxsize=8)
def chroma_fb(sample_rate: int, sigma: float = 0.5) -> torch.Tensor:
    """(N_FFT // 2 + 1, 12) weights: bin ``f`` -> pitch class of ``69 + 12 log2(f / 440)``, Gaussian in semitones."""
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    fb = np.zeros((freqs.size, 12))
    ok = (freqs >= CHROMA_FMIN) & (freqs <= CHROMA_FMAX)
    pitch = 69 + 12 * np.log2(freqs[ok] / 440.0)
    d = (pitch[:, None] - np.arange(12)[None, :] + 6) % 12 - 6  # circular distance in semitones
    fb[ok] = np.exp(-0.5 * (d / sigma) ** 2)
    return torch.from_numpy(fb).float()


def _deltas(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B, F, D) -> (B, F, 3 D): features, deltas, delta-deltas, each row over its own valid frames."""
    out = torch.zeros(*x.shape[:2], 3 * x.shape[2], dtype=x.dtype, device=x.device)
    for b, n in enumerate(lengths):
        if n == 0:
            continue
        v = x[b, :n].T[None]  # (1, D, n)
        d1 = AF.compute_deltas(v)
        d2 = AF.compute_deltas(d1)
        out[b, :n] = torch.cat([v, d1, d2], dim=1)[0].T  # (n, 3 D)
    return out


def frame_features(
    wav: torch.Tensor, lengths: torch.Tensor, name: str, sample_rate: int = 24_000, n_mels: int = 64, n_mfcc: int = 13
) -> torch.Tensor:
    """Features of a right-zero-padded batch.

    Args:
        wav: (B, S) float32.
        lengths: (B,) valid samples per row.
        name: ``mfcc`` | ``logmel`` | ``chroma``.
        sample_rate: Hz.
        n_mels: mel bands of ``logmel`` / ``mfcc``.
        n_mfcc: cepstral coefficients of ``mfcc`` (39 dims for 13).

    Returns:
        (B, F, D) float32 with ``F = student_frames(S)``; frames past a row's own count are garbage.
    """
    power = power_frames(wav)  # (B, F, 513)
    if name == "chroma":
        c = power @ chroma_fb(sample_rate).to(power)  # (B, F, 12)
        return c / c.amax(dim=-1, keepdim=True).clamp_min(1e-10)
    logmel = torch.log(power @ _mel_fb(n_mels, sample_rate).to(power) + 1e-6)  # (B, F, n_mels)
    if name == "logmel":
        return logmel
    if name == "mfcc":
        dct = AF.create_dct(n_mfcc, n_mels, "ortho").to(logmel)  # (n_mels, n_mfcc)
        return _deltas(logmel @ dct, [student_frames(int(n)) for n in lengths])
    raise ValueError(f"unknown feature {name!r}")
