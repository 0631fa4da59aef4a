"""Pretraining heads: per-codebook label prediction (cosine/NCE or softmax) and CQT regression.

The reference head is HuBERT's (Hsu et al. 2021, arXiv 2106.07447) as used by MERT (Li et al. 2023,
arXiv 2306.00107), ``mert_model.py`` L728-750 and ``compute_nce`` L953-974:

- ``final_proj = Linear(D, final_dim * K)`` (``untie_final_proj``), chunked into K per-codebook projections;
- label embeddings ``label_embs_concat`` of shape ``[K * C, final_dim]``, ``uniform_`` init (U[0, 1));
- ``logit_k[c] = cos(proj_k(x), e_{k,c}) / logit_temp`` over ALL C classes of codebook k, temperature 0.1,
  then cross-entropy against the true class. (fairseq builds ``[pos, all classes]`` and sets the duplicate of
  the positive to -inf; that is exactly a C-way softmax over the classes.)

The reference tables have ``|dict_k|`` = C + 4 rows (fairseq dictionaries add 4 special symbols that are never
targets); we use C rows and raw integer codes (the reference's ``.npy`` label path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineLabelHead(nn.Module):
    """HuBERT/MERT cosine-similarity head: K codebooks x C classes, temperature-scaled cosine logits.

    Args:
        dim: Encoder width D.
        n_codebooks: K label sets (8 EnCodec codebooks, or 1 for a k-means teacher).
        codebook_size: C classes per codebook.
        final_dim: Projection width per codebook (64 for 95M, 128 for 330M).
        logit_temp: Temperature (0.1); logits are bounded by ``1 / logit_temp`` in magnitude.
    """

    def __init__(self, dim: int, n_codebooks: int, codebook_size: int, final_dim: int, logit_temp: float = 0.1):
        super().__init__()
        self.n_codebooks, self.codebook_size, self.final_dim = n_codebooks, codebook_size, final_dim
        self.logit_temp = logit_temp
        self.final_proj = nn.Linear(dim, final_dim * n_codebooks)
        self.label_embs_concat = nn.Parameter(torch.empty(n_codebooks * codebook_size, final_dim).uniform_())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every codebook and class.

        Args:
            x: (N, D) encoder outputs at the frames to predict.

        Returns:
            (K, N, C) float32 logits ``cos(proj_k(x_n), e_{k,c}) / logit_temp``.
        """
        proj = self.final_proj(x).float().view(x.shape[0], self.n_codebooks, self.final_dim)  # (N, K, F)
        emb = self.label_embs_concat.float().view(self.n_codebooks, self.codebook_size, self.final_dim)  # (K, C, F)
        # torch.cosine_similarity semantics: each vector divided by max(norm, eps), eps 1e-8. The temperature scales
        # the (N, K, F) projections rather than the (K, N, C) logits: C / F = 16 times fewer elements, one pass fewer
        # over the logits forward and backward (equal up to float rounding; tested against the reference formula).
        proj = F.normalize(proj, dim=-1, eps=1e-8) / self.logit_temp
        emb = F.normalize(emb, dim=-1, eps=1e-8)
        return torch.bmm(proj.transpose(0, 1), emb.transpose(1, 2))  # (K, N, F) @ (K, F, C) -> (K, N, C)


class SoftmaxLabelHead(nn.Module):
    """Plain softmax classifier variant: one ``Linear(D, K * C)``, logits split per codebook (not the reference).

    Args:
        dim: Encoder width D.
        n_codebooks: K label sets.
        codebook_size: C classes per codebook.
    """

    def __init__(self, dim: int, n_codebooks: int, codebook_size: int):
        super().__init__()
        self.n_codebooks, self.codebook_size = n_codebooks, codebook_size
        self.classifier = nn.Linear(dim, n_codebooks * codebook_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every codebook and class.

        Args:
            x: (N, D) encoder outputs.

        Returns:
            (K, N, C) float32 logits.
        """
        logits = self.classifier(x).float().view(x.shape[0], self.n_codebooks, self.codebook_size)  # (N, K, C)
        return logits.transpose(0, 1)  # (K, N, C)


class CQTHead(nn.Module):
    """MERT's musical-teacher head: ``Linear(D, n_bins)`` regressing the linear-magnitude CQT (L546-548).

    Args:
        dim: Encoder width D.
        n_bins: CQT bins (336: 7 octaves x 48 bins from 32.7 Hz).
    """

    def __init__(self, dim: int, n_bins: int = 336):
        super().__init__()
        self.proj = nn.Linear(dim, n_bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict CQT frames: (N, D) -> (N, n_bins)."""
        return self.proj(x)


def label_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-codebook mean cross-entropy and accuracy.

    Args:
        logits: (K, N, C) logits.
        targets: (N, K) long class indices.

    Returns:
        (ce (K,), acc (K,)): mean cross-entropy and top-1 accuracy over the N frames, per codebook.
    """
    K, N, C = logits.shape
    tgt = targets.t()  # (K, N)
    ce = F.cross_entropy(logits.reshape(K * N, C), tgt.reshape(K * N), reduction="none").view(K, N).mean(dim=1)
    acc = (logits.argmax(dim=-1) == tgt).float().mean(dim=1)  # (K,)
    return ce, acc


def build_label_head(kind: str, dim: int, n_codebooks: int, codebook_size: int, final_dim: int, logit_temp: float):
    """The label head named ``kind``: ``"nce"`` (reference cosine head) or ``"softmax"``."""
    if kind == "nce":
        return CosineLabelHead(dim, n_codebooks, codebook_size, final_dim, logit_temp)
    if kind == "softmax":
        return SoftmaxLabelHead(dim, n_codebooks, codebook_size)
    raise ValueError(f"unknown head {kind!r}; expected 'nce' or 'softmax'")
