"""Acoustic teacher: EnCodec 24 kHz RVQ codes (MERT-v1), 8 codebooks x 1024 codes at 75 Hz.

Reference: ``EncodecModel.encodec_model_24khz()`` + ``set_target_bandwidth(6.0)`` on the clean
24 kHz audio (Défossez et al. 2022, "High Fidelity Neural Audio Compression"; MERT, Li et al.
2023). Weight sources, recorded in the teacher identity and never substituted for each other:

* ``pretrained``: the official checkpoint from the torch hub cache, downloaded if missing. If it
  cannot be found or downloaded the build fails and names the two alternatives below.
* a file path: a state dict of ``encodec_model_24khz`` loaded with ``weights_only=True``.
* ``random``: ``pretrained=False`` with a fixed seed, a **random-projection teacher** (BEST-RQ
  style, Chiu et al. 2022). Random-init EnCodec has all-zero codebooks (they are initialised by
  k-means on the first training batch), which would label every frame 0, and its encoder output
  is a near-constant vector (std/mean ~ 0.02) on which tiny codewords would tie. So the random
  teacher replaces the RVQ by :class:`RandomProjectionQuantizer`: the encoder features minus
  their mean (measured once on a fixed seeded calibration signal) are l2-normalised and each of
  the 8 codebooks takes the nearest of 1024 seeded random unit vectors (an independent hash each).

The encoder is causal (left-padded convs, unidirectional LSTM), so right zero padding in a batch
leaves the kept frames unchanged and long clips can be encoded in windows with
``left_context_frames`` of left context; the LSTM state makes chunked and whole-clip codes agree
almost but not provably always (tested agreement bound in ``tests/teachers``).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mert.teachers.base import HOP, TargetExtractor, TeacherError, module_sha256

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINT = "encodec_24khz-d7cc33bc.th"
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + OFFICIAL_CHECKPOINT
CODEBOOK_SIZE = 1024
CALIBRATION_SECONDS = 4.0


def _encodec():
    with warnings.catch_warnings():  # encodec uses the deprecated weight_norm API
        warnings.simplefilter("ignore", FutureWarning)
        from encodec import EncodecModel
    return EncodecModel


def _bare_model(seed: int = 0):
    """``encodec_model_24khz(pretrained=False)`` built under a fixed seed, on the CPU."""
    from mert.utils.rng import seeded

    with seeded(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _encodec().encodec_model_24khz(pretrained=False)


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpicklable / truncated / not a torch file
        raise TeacherError(f"cannot load {what} {path}: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise TeacherError(f"{what} {path} is not a state dict")
    return state


def _official_path() -> Path:
    """The official checkpoint in the torch hub cache, downloaded if missing (raises :class:`TeacherError`)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / OFFICIAL_CHECKPOINT
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(OFFICIAL_URL, str(path), hash_prefix="d7cc33bc", progress=False)
    except Exception as e:
        raise TeacherError(
            f"the official EnCodec 24 kHz weights are not in the torch hub cache ({path}) and cannot be "
            f"downloaded from {OFFICIAL_URL} ({type(e).__name__}: {e}). Either copy {OFFICIAL_CHECKPOINT} there, "
            "set label.rvq.weights to a local checkpoint path, or set label.rvq.weights: random for the "
            "seeded random-projection teacher (a different teacher: its labels are not MERT's)."
        ) from e
    return path


def calibration_signal(seconds: float = CALIBRATION_SECONDS, sr: int = 24_000, seed: int = 0) -> np.ndarray:
    """A fixed, seeded music-like signal: harmonic notes (a new one every 0.25 s), clicks and noise. (S,) float32."""
    rng = np.random.default_rng(seed)
    n, step = int(seconds * sr), sr // 4
    t = np.arange(step) / sr
    out = np.zeros(n, np.float64)
    for i in range(0, n - step + 1, step):
        f0 = 55.0 * 2 ** (rng.integers(0, 60) / 12)
        amps = rng.uniform(0, 1, 8) / np.arange(1, 9)
        note = sum(a * np.sin(2 * np.pi * f0 * (h + 1) * t) for h, a in enumerate(amps) if f0 * (h + 1) < sr / 2)
        out[i : i + step] += note * np.exp(-t * rng.uniform(1, 12))
        if rng.random() < 0.3:
            out[i : i + 200] += rng.normal(0, 1, 200)
    out += rng.normal(0, 0.05, n)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


class RandomProjectionQuantizer(nn.Module):
    """BEST-RQ-style quantizer over frozen features: ``argmax_c <normalize(x - mu), e_k,c>`` per codebook ``k``.

    Args:
        mu: (D,) feature mean to remove.
        n_codebooks: number of independent codebooks.
        codebook_size: codes per codebook.
        seed: seed of the random unit codewords.
    """

    def __init__(self, mu: torch.Tensor, n_codebooks: int = 8, codebook_size: int = CODEBOOK_SIZE, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        cb = torch.randn(n_codebooks, codebook_size, mu.shape[0], generator=g)  # (K, C, D)
        self.register_buffer("mu", mu.float())
        self.register_buffer("codebooks", cb / cb.norm(dim=-1, keepdim=True))

    @classmethod
    @torch.no_grad()
    def calibrate(cls, encoder: nn.Module, seed: int, n_codebooks: int = 8) -> RandomProjectionQuantizer:
        """Measure the feature mean of ``encoder`` on :func:`calibration_signal` (CPU) and build the quantizer."""
        x = torch.from_numpy(calibration_signal(seed=seed)).view(1, 1, -1)
        # float16 rounding makes the mean (and so the weights hash) robust to last-bit BLAS differences.
        mu = encoder(x)[0].mean(-1).half().float()  # (D, F) -> (D,)
        return cls(mu, n_codebooks, CODEBOOK_SIZE, seed)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, D, F) features -> (B, K, F) int64 codes."""
        z = emb.transpose(1, 2) - self.mu  # (B, F, D)
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # one codebook at a time: (B, F, C) scores instead of (B, K, F, C) (600 MB for 8 x 30 s)
        return torch.stack([(z @ cb.T).argmax(-1) for cb in self.codebooks], dim=1)  # (B, K, F)


def load_encodec(weights: str, seed: int = 0) -> tuple[Any, str]:
    """Build the 24 kHz EnCodec model from ``weights``.

    Args:
        weights: ``"pretrained"``, ``"random"`` or a path to a state dict file.
        seed: seed of the random-projection teacher (only for ``"random"``).

    Returns:
        ``(model, source)`` with ``source`` one of ``pretrained``, ``checkpoint``, ``random``.
    """
    if weights == "random":
        return _bare_model(seed).eval(), "random"
    if weights == "pretrained":
        path, source, what = _official_path(), "pretrained", "official EnCodec checkpoint"
    else:
        path, source, what = Path(os.path.expanduser(weights)), "checkpoint", "EnCodec checkpoint"
        if not path.is_file():
            raise TeacherError(f"label.rvq.weights: checkpoint file {path} not found (or use 'pretrained'/'random')")
    model = _bare_model(seed)
    try:
        model.load_state_dict(_load_state(path, what), strict=True)
    except RuntimeError as e:
        raise TeacherError(f"{what} {path} does not fit encodec_model_24khz: {e}") from e
    return model.eval(), source


class EncodecTeacher(TargetExtractor):
    """EnCodec RVQ codes as labels: ``encode(wav) -> (B, 8, ceil(S / 320))`` at 6 kbps.

    Args:
        model: an ``encodec`` 24 kHz model.
        source: ``pretrained`` | ``checkpoint`` | ``random`` (enters the name and the identity).
        bandwidth: target bandwidth in kbps (6.0 -> 8 codebooks).
        seed: recorded for the random teacher.
        context_frames: left context of a chunk window, in 75 Hz frames.
        chunk_frames: kept frames per window of a long clip (chunking can flip rare codes: part of the key).
    """

    codebook_size = CODEBOOK_SIZE

    def __init__(
        self,
        model,
        source: str,
        bandwidth: float = 6.0,
        seed: int = 0,
        context_frames: int = 75,
        chunk_frames: int = 2250,
    ):
        super().__init__()
        self.model = model
        try:
            model.set_target_bandwidth(bandwidth)
        except ValueError as e:
            raise TeacherError(str(e)) from e
        self.source, self.bandwidth, self.seed = source, bandwidth, seed
        self.sample_rate = model.sample_rate
        self.n_codebooks = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, bandwidth)
        self.left_context_frames = context_frames
        self.chunk_frames = chunk_frames
        self.name = "rvq-random-projection" if source == "random" else f"rvq-encodec24k-{source}"
        self.rpq = None
        if source == "random":
            self.rpq = RandomProjectionQuantizer.calibrate(model.encoder, seed, self.n_codebooks)
        self._weights_sha256 = module_sha256(self)
        self.freeze()

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) -> (B, K, ceil(S / 320)) int64; causal, so ``lengths`` is not needed."""
        if self.rpq is not None:
            return self.rpq(self.model.encoder(wav[:, None, :]))  # (B, 1, S) -> (B, D, F) -> (B, K, F)
        codes, _scale = self.model.encode(wav[:, None, :])[0]  # (B, 1, S) -> (B, K, F)
        return codes

    def config(self) -> dict[str, Any]:
        cfg = {
            "model": "encodec_24khz",
            "encodec": "0.1.1",
            "weights": self.source,
            "bandwidth": self.bandwidth,
            "n_codebooks": self.n_codebooks,
            "codebook_size": self.codebook_size,
            "sample_rate": self.sample_rate,
            "hop": HOP,
            "context_frames": self.left_context_frames,
            "chunk_frames": self.chunk_frames,
        }
        if self.source == "random":
            cfg.update(seed=self.seed, quantizer="random-projection", calibration_seconds=CALIBRATION_SECONDS)
        return cfg

    def weights_sha256(self) -> str:
        return self._weights_sha256


def build_rvq_teacher(
    weights: str = "random",
    seed: int = 0,
    bandwidth: float = 6.0,
    context_seconds: float = 1.0,
    chunk_seconds: float = 30.0,
) -> EncodecTeacher:
    """EnCodec teacher from ``label.rvq`` params (see :func:`load_encodec` for ``weights``)."""
    model, source = load_encodec(weights, seed)
    log.info("EnCodec teacher: weights=%s (%s)", source, weights)
    ctx, chunk = round(context_seconds * 75), max(1, round(chunk_seconds * 75))
    return EncodecTeacher(model, source, bandwidth, seed, context_frames=ctx, chunk_frames=chunk)


def build_debug_rvq_extractor(seed: int = 0) -> EncodecTeacher:
    """The seeded random-projection teacher: never downloads, for tests and offline runs."""
    return build_rvq_teacher("random", seed)
