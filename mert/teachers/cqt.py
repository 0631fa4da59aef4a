"""MERT's musical teacher: the nnAudio CQT magnitude target, and a fast equivalent of it.

MERT (Li et al. 2023, arXiv 2306.00107) regresses, on masked frames, the linear CQT magnitude of the
clean 24 kHz input computed by nnAudio 0.3.4 ``features.CQT`` (= ``CQT1992v2``) with the parameters in
:data:`MERT_CQT` (``mert_model.py`` L519-528, L752-759; ``docs/mert-reference.md`` section 2).

nnAudio computes it as a stride-320 ``conv1d`` with 336 complex kernels zero-padded to 65536 taps (the
lowest bin's Hann window is 50460 taps long), i.e. ~45 M real MACs per output frame: about 10x real time
on 2 CPU cores. :class:`FastCQT` computes the same numbers from the same kernels in the frequency domain
(Brown & Puckette 1992, "An efficient algorithm for the calculation of a constant Q transform"):

* the zero-padded signal is cut into blocks of ``N = 320 * M`` samples, one block per ``M - 204`` frames;
* each kernel's spectrum on the N-point grid is computed once and kept only where it is not negligible
  (the run of ``M``-wide spectral chunks whose peak exceeds ``threshold`` x the kernel's spectral peak);
* since only every 320-th lag is needed and ``N = 320 * M``, the product ``X * K`` is folded modulo ``M``
  (aliasing = decimation in time) and a single ``M``-point inverse FFT per bin gives the 320-hop outputs.

Nothing is approximated but the dropped spectral tails; measured error vs :class:`ReferenceCQT` is ~1e-5 of
the clip's maximum (see ``tests/teachers/test_cqt.py`` and ``benchmarks/cqt.py``).

Normalisation caveat: the target's absolute scale is nnAudio 0.3.4's: L1-normalised kernels and the
``normalization_type="librosa"`` default of ``forward`` (outputs times ``sqrt(kernel_length)``). Other nnAudio
versions changed these defaults, so "exact magnitude scaling depends on the nnAudio version" (reference,
UNVERIFIED against the released checkpoints). Both modules here take the kernels from nnAudio's own
``create_cqt_kernels`` and apply the 0.3.4 ``librosa`` scaling explicitly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class CQTSpec:
    """Parameters of nnAudio's ``CQT1992v2`` as MERT uses them (``mert_model.py`` L519-528)."""

    sr: int = 24000
    hop_length: int = 320  # sr // label_rate (75 Hz)
    fmin: float = 32.7  # C1
    n_bins: int = 336  # audio_cqt_bins: 7 octaves
    bins_per_octave: int = 48  # 336 // 7: 4 bins per semitone
    filter_scale: float = 1.0
    norm: int = 1  # L1-normalised kernels
    window: str = "hann"

    @property
    def q(self) -> float:
        """Constant quality factor ``filter_scale / (2**(1/bpo) - 1)`` (~68.75)."""
        return float(self.filter_scale) / (2 ** (1 / self.bins_per_octave) - 1)

    def n_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` (``center=True``): ``L // hop + 1`` (376 for 5 s)."""
        return num_samples // self.hop_length + 1

    def frequencies(self) -> np.ndarray:
        """Centre frequency of every bin in Hz, shape ``(n_bins,)``."""
        return self.fmin * 2.0 ** (np.arange(self.n_bins) / self.bins_per_octave)


MERT_CQT = CQTSpec()


def nnaudio_kernels(spec: CQTSpec = MERT_CQT) -> tuple[np.ndarray, np.ndarray]:
    """The exact time-domain kernel bank of nnAudio's CQT (via ``nnAudio.utils.create_cqt_kernels``).

    Args:
        spec: CQT parameters.

    Returns:
        ``(kernels, lengths)``: complex64 ``(n_bins, width)`` kernels, each centred in ``width``
        (a power of two, 65536 for MERT) and L1-normalised; float64 ``(n_bins,)`` window lengths.
    """
    from nnAudio.utils import create_cqt_kernels

    kernels, _, lengths, _ = create_cqt_kernels(
        spec.q, spec.sr, spec.fmin, spec.n_bins, spec.bins_per_octave, spec.norm, spec.window, None
    )
    return kernels.astype(np.complex64), lengths.numpy().astype(np.float64)


class ReferenceCQT(nn.Module):
    """nnAudio 0.3.4 ``features.CQT`` with MERT's parameters: the target as the original code computes it.

    Frozen (kernels are buffers) and run without autograd. Slow: see :class:`FastCQT`. On CUDA its
    ``conv1d`` goes through cuDNN, which may use TF32 (``torch.backends.cudnn.allow_tf32`` is on by
    default): the CPU output is the one to compare against.
    """

    def __init__(self, spec: CQTSpec = MERT_CQT):
        super().__init__()
        from nnAudio.features import CQT

        self.spec = spec
        self.cqt = CQT(
            sr=spec.sr,
            hop_length=spec.hop_length,
            fmin=spec.fmin,
            fmax=None,
            n_bins=spec.n_bins,
            bins_per_octave=spec.bins_per_octave,
            filter_scale=spec.filter_scale,
            norm=spec.norm,
            window=spec.window,
            center=True,
            pad_mode="constant",
            trainable=False,
            output_format="Magnitude",
            verbose=False,
        )
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Linear CQT magnitude.

        Args:
            wav: ``(B, L)`` mono audio at ``spec.sr``.

        Returns:
            ``(B, n_bins, L // hop + 1)`` float32 magnitudes.
        """
        _check_wav(wav)
        return self.cqt(wav.float(), normalization_type="librosa")


PARITY_TOLERANCE = {"max": 1e-4, "mean": 1e-5}
"""FastCQT vs ReferenceCQT, relative to each clip's maximum reference magnitude (see :func:`parity_errors`).

Measured on music-like, chirp and white-noise clips: ~1.5e-5 (max) and ~1.5e-6 (mean), the level of the
float32 rounding in nnAudio's 65536-tap convolution itself. An error of 1e-4 of the peak is 1e-8 of the
peak squared in the MSE target: far below anything the CQT head can fit.
"""


def parity_errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Worst-clip ``max`` and ``mean`` of ``|out - ref| / max(ref)`` for ``(B, n_bins, T)`` magnitudes."""
    scale = ref.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # (B, 1, 1)
    rel = (out - ref).abs() / scale
    return {"max": float(rel.amax()), "mean": float(rel.mean(dim=(1, 2)).amax())}


def _check_wav(wav: torch.Tensor) -> None:
    if wav.dim() != 2:
        raise ValueError(f"expected audio of shape (B, L), got {tuple(wav.shape)}")


@dataclass(frozen=True)
class _SpectralGroup:
    """Consecutive bins sharing one spectral slice: chunks ``first .. first + u - 1`` and coefficients ``(M, G, u)``.

    ``first`` is signed: chunk ``-1`` holds the ``M`` highest (i.e. negative) frequencies of the ``N``-point FFT.
    """

    first: int
    coefs: torch.Tensor


@dataclass(frozen=True)
class _SpectralBank:
    width: int  # nnAudio's zero-padded kernel length (65536 for MERT)
    groups: tuple[_SpectralGroup, ...]


def _kernel_spectra(kernels: np.ndarray, lengths: np.ndarray, n_fft: int, batch: int):
    """Yield ``ifft`` of ``batch`` zero-padded kernels at a time on the ``n_fft`` grid, ``(b, n_fft)`` complex64.

    With ``c = ifft(k)`` (which includes ``1/n_fft``), ``sum_n x[n + tau] k[n] = sum_f X[f] c[f] e^{2i pi f tau/N}``
    for ``X = fft(x)``. The ``sqrt(length)`` factor of nnAudio's ``librosa`` normalisation is folded in.
    """
    import scipy.fft  # pocketfft in single precision: several times faster than torch's CPU FFT here

    for k0 in range(0, len(kernels), batch):
        spectra = scipy.fft.ifft(kernels[k0 : k0 + batch], n=n_fft, axis=-1)  # (b, N)
        yield spectra * np.sqrt(lengths[k0 : k0 + batch]).astype(np.float32)[:, None]


def _kept_chunks(spectra: np.ndarray, threshold: float) -> tuple[int, int]:
    """The smallest circular run of chunks holding every chunk above ``threshold`` x its bin's spectral peak.

    Args:
        spectra: ``(G, C, M)`` kernel spectra of a group of bins, cut in ``C`` chunks of ``M``.
        threshold: relative threshold.

    Returns:
        ``(first, count)``: chunks ``first, ..., first + count - 1`` with ``-C/2 <= first < C/2`` (signed: the
        chunk ``j < 0`` is ``C + j``); every chunk if nothing is negligible.
    """
    n_chunks = spectra.shape[1]
    peaks = np.abs(spectra).max(-1)  # (G, C)
    keep = (peaks > threshold * peaks.max(-1, keepdims=True)).any(0)  # (C,)
    centre = int(peaks[len(peaks) // 2].argmax())
    offsets = (np.flatnonzero(keep) - centre + n_chunks // 2) % n_chunks - n_chunks // 2
    first = (centre + int(offsets.min()) + n_chunks // 2) % n_chunks - n_chunks // 2
    return first, int(offsets.max() - offsets.min()) + 1


@functools.lru_cache(maxsize=4)
def spectral_bank(
    spec: CQTSpec = MERT_CQT, block_hops: int = 640, threshold: float = 1e-5, group_size: int = 48
) -> _SpectralBank:
    """Truncated kernel spectra on the ``N = hop * M`` grid (``M = block_hops``), cut in ``hop`` chunks of ``M``.

    Args:
        spec: CQT parameters.
        block_hops: ``M``; the FFT block is ``hop * M`` samples.
        threshold: spectral chunks below ``threshold`` x a kernel's spectral peak are dropped (for every bin
            of a group: the group keeps the union, with exact coefficients).
        group_size: consecutive bins per group (one slice and one batched matmul per group).

    Returns:
        The kernel width and one :class:`_SpectralGroup` per group of bins, in bin order (CPU tensors).
    """
    kernels, lengths = nnaudio_kernels(spec)
    n_chunks = spec.hop_length
    groups = []
    for spectra in _kernel_spectra(kernels, lengths, n_chunks * block_hops, group_size):
        spectra = spectra.reshape(len(spectra), n_chunks, block_hops)  # (G, C, M)
        first, count = _kept_chunks(spectra, threshold)
        chunks = np.arange(first, first + count) % n_chunks  # (u,)
        coefs = np.ascontiguousarray(spectra[:, chunks].transpose(2, 0, 1))  # (M, G, u)
        groups.append(_SpectralGroup(first, torch.from_numpy(coefs)))
    return _SpectralBank(kernels.shape[1], tuple(groups))


def _contract(coefs: torch.Tensor, x: torch.Tensor, use_matmul: bool) -> torch.Tensor:
    """``(M, G, u) @ (M, u, BK) -> (M, G, BK)``.

    On CUDA the product is summed elementwise instead of calling cuBLAS: complex GEMMs there may run in
    TF32 (``torch.backends.cuda.matmul`` settings), which would cost ~1e-3 relative accuracy.
    """
    if use_matmul:
        return torch.bmm(coefs, x)
    out = coefs[:, :, 0, None] * x[:, None, 0]  # (M, G, 1) * (M, 1, BK) -> (M, G, BK)
    for j in range(1, x.shape[1]):  # u <= ~70 small kernels; no (M, G, u, BK) temporary
        out += coefs[:, :, j, None] * x[:, None, j]
    return out


class FastCQT(nn.Module):
    """nnAudio's MERT CQT computed by block FFT with truncated kernel spectra (no trainable parameters).

    Same input/output convention as :class:`ReferenceCQT` (``center=True``, constant padding,
    ``L // hop + 1`` frames); works on CPU and CUDA (``.to(device)``).

    Args:
        spec: CQT parameters.
        block_hops: FFT block size in hops (``N = hop * block_hops``); a block yields
            ``block_hops - ceil(width / hop) + 1`` frames (436 for 640, so a 5.12 s crop is one block).
        threshold: relative spectral truncation threshold (accuracy vs speed).
        group_size: bins processed together (memory vs Python overhead).
    """

    def __init__(self, spec: CQTSpec = MERT_CQT, block_hops: int = 640, threshold: float = 1e-5, group_size: int = 48):
        super().__init__()
        self.spec = spec
        bank = spectral_bank(spec, block_hops, threshold, group_size)
        self.width = bank.width
        self.block_hops = block_hops
        self.block_frames = (spec.hop_length * block_hops - bank.width) // spec.hop_length + 1
        if self.block_frames < 1:
            raise ValueError(f"block_hops={block_hops} is shorter than the kernel width {bank.width}")
        self.firsts = [group.first for group in bank.groups]
        self.lo = min(self.firsts)  # lowest (signed) chunk any bin uses
        self.hi = max(g.first + g.coefs.shape[-1] for g in bank.groups)  # one past the highest
        # Derived constants: not persistent, so state dicts stay small and always match the code.
        self.register_buffer("rows", torch.arange(self.lo, self.hi) % spec.hop_length, persistent=False)
        for i, group in enumerate(bank.groups):
            self.register_buffer(f"coefs_{i}", group.coefs, persistent=False)
        self.eval()

    def _blocks(self, wav: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Zero-pad like nnAudio and cut overlapping FFT blocks: ``(B, n_blocks, N)``, frames, n_blocks."""
        hop, n_fft = self.spec.hop_length, self.spec.hop_length * self.block_hops
        frames = self.spec.n_frames(wav.shape[-1])
        n_blocks = math.ceil(frames / self.block_frames)
        total = (n_blocks - 1) * hop * self.block_frames + n_fft
        pad = self.width // 2
        padded = nn.functional.pad(wav, (pad, max(0, total - wav.shape[-1] - pad)))[:, :total]
        return padded.unfold(-1, n_fft, hop * self.block_frames), frames, n_blocks  # (B, n_blocks, N)

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Linear CQT magnitude.

        Args:
            wav: ``(B, L)`` mono audio at ``spec.sr``.

        Returns:
            ``(B, n_bins, L // hop + 1)`` float32 magnitudes.
        """
        _check_wav(wav)
        blocks, frames, n_blocks = self._blocks(wav.float())
        batch, hop, m = blocks.shape[0], self.spec.hop_length, self.block_hops
        spectrum = torch.fft.fft(blocks).view(batch * n_blocks, hop, m)  # (B*K, C, M)
        used = spectrum[:, self.rows].permute(1, 2, 0).contiguous()  # (hi - lo, M, B*K): chunk j at row j - lo
        folded = []
        for i, first in enumerate(self.firsts):
            coefs = getattr(self, f"coefs_{i}")  # (M, G, u)
            x = used[first - self.lo : first - self.lo + coefs.shape[-1]].transpose(0, 1)  # (M, u, B*K), a view
            # sum_j c_k[j*M + m] X[j*M + m]: the product aliased modulo M, i.e. decimated by hop in time
            folded.append(_contract(coefs, x, use_matmul=not spectrum.is_cuda))  # (M, G, B*K)
        folded = torch.cat(folded, 1)  # (M, n_bins, B*K)
        lags = torch.fft.ifft(folded, dim=0, norm="forward")[: self.block_frames]  # (Tb, n_bins, B*K) complex
        lags = (lags.real.square() + lags.imag.square()).sqrt()  # |.|: 5x faster than complex abs on CPU
        out = lags.view(self.block_frames, self.spec.n_bins, batch, n_blocks).permute(2, 1, 3, 0)  # (B,bins,K,Tb)
        return out.reshape(batch, self.spec.n_bins, n_blocks * self.block_frames)[..., :frames].contiguous()


def build_cqt(kind: str = "fast", device: str | torch.device | None = None, spec: CQTSpec = MERT_CQT) -> nn.Module:
    """Build the CQT target extractor.

    Args:
        kind: ``"fast"`` (:class:`FastCQT`, the default for training) or ``"reference"`` (nnAudio).
        device: where to put the module (CPU when ``None``).
        spec: CQT parameters (MERT's by default).

    Returns:
        A frozen module mapping ``(B, L)`` audio to ``(B, n_bins, L // hop + 1)`` magnitudes.
    """
    if kind == "fast":
        module = FastCQT(spec)
    elif kind == "reference":
        module = ReferenceCQT(spec)
    else:
        raise ValueError(f"unknown CQT kind {kind!r}: expected 'fast' or 'reference'")
    return module.to(device) if device is not None else module


@torch.no_grad()
def log_cqt_stats(corpus, gain: float = 100.0, seconds: float = 600.0, crop_seconds: float = 5.0) -> dict[str, float]:
    """Mean and std of ``log1p(gain * |CQT|)`` over crops spread evenly over a corpus (for ``cqt_scale: log``).

    Args:
        corpus: a ``mert.data.shards.Corpus``.
        gain: ``PretrainingConfig.cqt_log_gain``.
        seconds: audio budget; one crop of ``crop_seconds`` from the start of every k-th clip.
        crop_seconds: crop length.

    Returns:
        ``{"cqt_log_gain", "cqt_log_mean", "cqt_log_std", "frames"}`` (fields of ``PretrainingConfig``; the
        values rounded to 1e-4), the objective_overrides of a ``log``-scale run on this corpus.
    """
    cqt = build_cqt("fast")
    n = int(crop_seconds * corpus.sample_rate)
    clips = [c for c in corpus.clips if c.length >= n] or list(corpus.clips)
    step = max(1, round(len(clips) * crop_seconds / seconds))
    total, total_sq, count = 0.0, 0.0, 0
    for clip in clips[::step]:
        x = torch.from_numpy(np.ascontiguousarray(corpus.audio(clip, 0, min(n, clip.length))))[None]
        y = torch.log1p(gain * cqt(x)).double()  # (1, n_bins, T)
        total, total_sq, count = total + float(y.sum()), total_sq + float(y.pow(2).sum()), count + y.numel()
    if not count:
        raise ValueError(f"no audio in corpus {corpus.root}")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean**2, 1e-12))
    return {
        "cqt_log_gain": gain,
        "cqt_log_mean": round(mean, 4),
        "cqt_log_std": round(std, 4),
        "frames": count // cqt.spec.n_bins,
    }
