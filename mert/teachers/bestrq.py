"""Mel BEST-RQ teacher (MusicFM, Won et al. 2023; BEST-RQ, Chiu et al. 2022): frozen random projection + codebook.

Per token (see :mod:`mert.teachers.mel`: 128-bin log-mel, 4 frames stacked -> 512 dims, at the student's 75 Hz):

    x = (logmel_tokens - mean) / std                  global corpus statistics (MelStats; ``norm: global``)
    z_k = x @ P_k                                     P_k: (512, 16), Xavier-normal, frozen
    code_k = argmin_c || z_k / |z_k| - e_kc / |e_kc| ||   e_k: (C, 16) ~ N(0, 1), frozen

as ``minzwon/musicfm`` ``modules/random_quantizer.py``: each codebook ``k`` is built exactly as MusicFM builds
``quantizer_{feature}_{k}``, under ``torch.manual_seed(seed + k)`` (seed 142): ``xavier_normal_`` on an empty
``(512, 16)`` tensor, then ``normal_`` on an empty ``(C, 16)`` one, so on the CPU the buffers are MusicFM's own.
Defaults: one codebook of 4096 codes (MusicFM). ``n_codebooks > 1`` gives independent projections and codebooks
(BEST-RQ's multi-codebook variant, MusicFM's ``num_codebooks``), e.g. 8 x 1024 like EnCodec's shape.

``norm: per_bin`` (a documented deviation) standardises each mel bin with its own corpus mean / std instead of one
global pair (BEST-RQ's per-dimension normalisation); on a rendered real-music corpus it spreads the codes much
more evenly (``benchmarks/teachers.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mert.teachers.base import TargetExtractor
from mert.teachers.mel import MelFrontEnd, MelSpec, MelStats
from mert.utils.io import sha256_json

MUSICFM_SEED = 142


def musicfm_quantizer(input_dim: int, codebook_dim: int, codebook_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """MusicFM's ``RandomProjectionQuantizer`` buffers for one codebook (global CPU RNG, forked and restored).

    Returns:
        ``(projection (input_dim, codebook_dim), codebook (codebook_size, codebook_dim))`` float32.
    """
    from mert.utils.rng import seeded

    with seeded(seed):
        projection = torch.nn.init.xavier_normal_(torch.empty(input_dim, codebook_dim))
        codebook = torch.nn.init.normal_(torch.empty(codebook_size, codebook_dim))
    return projection, codebook


class BestRQTeacher(TargetExtractor):
    """Mel BEST-RQ codes: ``encode(wav) -> (B, K, F)`` at 75 Hz, aligned with the student's frames.

    Args:
        spec: log-mel token settings.
        stats: corpus mean / std of the log-mel (the normalisation).
        n_codebooks: K independent projection + codebook pairs (MusicFM: 1).
        codebook_size: C codes per codebook (MusicFM: 4096).
        codebook_dim: projection width (MusicFM: 16).
        seed: codebook ``k`` is built under seed ``seed + k`` (MusicFM: 142).
        chunk_frames: kept frames per window of a long clip.
        norm: ``global`` (MusicFM) or ``per_bin`` (see :data:`mert.teachers.mel.NORMS`).
    """

    name = "bestrq"

    def __init__(
        self,
        spec: MelSpec,
        stats: MelStats,
        n_codebooks: int = 1,
        codebook_size: int = 4096,
        codebook_dim: int = 16,
        seed: int = MUSICFM_SEED,
        chunk_frames: int = 2250,
        norm: str = "global",
    ):
        super().__init__()
        stats.check(spec, "BEST-RQ teacher")
        self.spec, self.stats, self.seed, self.norm = spec, stats, seed, norm
        self.n_codebooks, self.codebook_size, self.codebook_dim = n_codebooks, codebook_size, codebook_dim
        self.sample_rate, self.chunk_frames = spec.sample_rate, chunk_frames
        self.left_context_frames = self.right_context_frames = spec.context_frames
        self.front = MelFrontEnd(spec)
        pairs = [musicfm_quantizer(spec.dim, codebook_dim, codebook_size, seed + k) for k in range(n_codebooks)]
        self.register_buffer("projections", torch.stack([p for p, _ in pairs]))  # (K, D, d)
        self.register_buffer("codebooks", F.normalize(torch.stack([c for _, c in pairs]), dim=-1))  # (K, C, d)
        mean, std = stats.vectors(norm)
        self.register_buffer("norm_mean", mean)  # (D,) dB
        self.register_buffer("norm_std", std)  # (D,) dB
        self.freeze()

    def tokens(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Normalised stacked log-mel: (B, S) -> (B, F, D)."""
        return (self.front(wav, lengths) - self.norm_mean) / self.norm_std

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, D) tokens -> (B, K, F, d) L2-normalised projections."""
        return F.normalize(torch.einsum("bfd,kde->bkfe", x, self.projections), dim=-1)

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, K, F) int64, F >= student_frames(S).

        For unit vectors ``|a - b|^2 = 2 - 2 a.b``: the nearest normalised code is the one of largest cosine.
        """
        z = self.project(self.tokens(wav, lengths))  # (B, K, F, d)
        # one codebook at a time: (B, F, C) scores instead of (B, K, F, C)
        return torch.stack([(z[:, k] @ self.codebooks[k].T).argmax(-1) for k in range(self.n_codebooks)], dim=1)

    def config(self) -> dict[str, Any]:
        return {
            "model": "bestrq-mel",
            "mel": self.spec.as_dict(),
            "stats": {"mean": self.stats.mean, "std": self.stats.std, "hash": self.stats.hash},
            "norm": self.norm,
            "n_codebooks": self.n_codebooks,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "seed": self.seed,
            "init": "musicfm: manual_seed(seed + k); xavier_normal_(projection); normal_(codebook)",
            "chunk_frames": self.chunk_frames,
            "context_frames": self.left_context_frames,
        }

    def weights_sha256(self) -> str:
        """Hash of the projections, codebooks and statistics (the mel filterbank is fixed by the config)."""
        import hashlib

        h = hashlib.sha256(sha256_json(self.config()).encode())
        for t in (self.projections, self.codebooks, self.norm_mean, self.norm_std):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
