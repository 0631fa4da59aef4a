"""Probe heads (MARBLE constrained track, reference section 5) and the per-split tensors they train on.

* :class:`MLPProbe`: one layer of the frozen features, or the softmax-weighted sum of all layers
  (learnable weights, [M] ``probers.py``), then Linear(D, 512) - ReLU - Dropout(0.2) - Linear(512, n_out).
  Applied per window (clip tasks) or per frame (beat tracking). ReLU and dropout are one fused in-place step
  (:class:`ReLUDropout`, masks from a seeded NumPy generator): torch's CPU Bernoulli sampler and three fresh
  ``(frames, 512)`` tensors per step were most of the cost of frame-level probes.
* :class:`LSTMMaskProbe`: the separation probe, a 3-layer 512-unit bidirectional LSTM on 75 Hz features
  predicting one magnitude mask per source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class LayerSelect(nn.Module):
    """``(R, n_layers, D) -> (R, D)``: one layer, or a softmax-weighted sum over layers when ``layer`` is None."""

    def __init__(self, n_layers: int, layer: int | None):
        super().__init__()
        self.layer = layer
        self.weights = nn.Parameter(torch.zeros(n_layers)) if layer is None else None

    def forward(self, x: Tensor) -> Tensor:
        if self.weights is None:
            return x[:, self.layer]
        return torch.einsum("rld,l->rd", x, torch.softmax(self.weights, 0))

    def layer_weights(self) -> list[float] | None:
        return None if self.weights is None else torch.softmax(self.weights.detach(), 0).tolist()


class _ReLUDropout(torch.autograd.Function):
    """``relu(h) * keep / (1 - p)`` in place on ``h`` (CPU); the gradient is ``g * keep / (1 - p) * [h > 0]``.

    The elementwise work runs in NumPy on views of the tensors: NumPy maps large arrays on huge pages, while each
    fresh multi-MB torch tensor costs a page fault per 4 KiB (several times the arithmetic on these shapes).
    """

    @staticmethod
    def forward(ctx, h: Tensor, bits: np.ndarray, cut: int) -> Tensor:
        hn = h.detach().numpy()
        keep = bits >= cut  # inverted dropout: kept with probability 1 - cut / 65536
        keep &= hn > 0  # ... and where the ReLU passes
        deriv = np.multiply(keep, np.float32(65536 / (65536 - cut)), dtype=np.float32)  # d out / d h
        hn *= deriv
        ctx.mark_dirty(h)
        ctx.deriv = deriv
        return h

    @staticmethod
    def backward(ctx, grad: Tensor):
        return torch.from_numpy(grad.contiguous().numpy() * ctx.deriv), None, None


class ReLUDropout(nn.Module):
    """ReLU then inverted dropout (kept units scaled by ``1 / (1 - p)``), fused and in place on the input.

    The same function as ``nn.ReLU()`` followed by ``nn.Dropout(p)``, at a fraction of the cost on CPU, where
    frame-level probes spend their time on ``(frames, 512)`` activations: the masks come from a seeded NumPy PCG64
    stream (16 raw bits per unit; torch's CPU ``bernoulli_`` was the largest single cost), and ReLU, mask and
    scale are applied in place in NumPy instead of making three new torch tensors. The drop probability is
    ``round(p * 65536) / 65536`` (0.2 -> 0.199997). Eval mode: ``relu_`` only. Non-CPU (or non-float32)
    tensors use torch's ReLU and dropout.

    The input must be a fresh activation nothing else needs (the output of a Linear layer).

    Args:
        p: drop probability.
        seed: seed of the mask stream (deterministic training for a given seed).
    """

    def __init__(self, p: float = 0.2, seed: int = 0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.bits = np.random.PCG64(seed)
        self.cut = int(round(p * 65536))

    def forward(self, h: Tensor) -> Tensor:
        if not self.training or self.cut == 0:
            return h.relu_()
        if h.device.type != "cpu" or h.dtype != torch.float32 or not h.is_contiguous():
            return nn.functional.dropout(h.relu_(), self.p, True)
        n = h.numel()
        bits = self.bits.random_raw((n + 3) // 4).view(np.uint16)[:n].reshape(h.shape)  # 16 random bits per unit
        return _ReLUDropout.apply(h, bits, self.cut)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLPProbe(nn.Module):
    """The MARBLE MLP probe on one layer (or the weighted sum of layers).

    Args:
        n_layers: layers in the input features.
        dim: feature width D.
        n_out: outputs (classes, tags, regression targets, or 1 for beat activation).
        layer: layer index, or ``None`` for the learnable softmax-weighted sum.
        hidden: hidden width (512 in the reference).
        dropout: dropout after the ReLU (0.2 in the reference).
        seed: seed of the dropout masks (:class:`ReLUDropout`).
    """

    def __init__(self, n_layers: int, dim: int, n_out: int, layer: int | None, hidden: int = 512,
                 dropout: float = 0.2, seed: int = 0):  # fmt: skip
        super().__init__()
        self.select = LayerSelect(n_layers, layer)
        self.net = nn.Sequential(nn.Linear(dim, hidden), ReLUDropout(dropout, seed), nn.Linear(hidden, n_out))

    def forward(self, x: Tensor) -> Tensor:
        """``(R, n_layers, D) -> (R, n_out)`` logits/values."""
        return self.net(self.select(x))

    def layer_weights(self) -> list[float] | None:
        """Softmax weights of the weighted-sum probe (None for a single-layer probe)."""
        return self.select.layer_weights()


class LSTMMaskProbe(nn.Module):
    """Bidirectional-LSTM mask estimator for source separation (3 layers of 512 units in the reference).

    Args:
        n_layers: layers in the input features.
        dim: feature width D.
        n_bins: STFT bins per frame.
        n_sources: number of sources (one sigmoid mask each).
        layer: layer index or ``None`` (weighted sum).
        hidden: LSTM units per direction.
        num_layers: stacked LSTM layers.
    """

    def __init__(self, n_layers: int, dim: int, n_bins: int, n_sources: int, layer: int | None,
                 hidden: int = 512, num_layers: int = 3):  # fmt: skip
        super().__init__()
        self.select = LayerSelect(n_layers, layer)
        self.lstm = nn.LSTM(dim, hidden, num_layers=num_layers, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, n_bins * n_sources)
        self.n_bins, self.n_sources = n_bins, n_sources

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, n_layers, D) -> (B, n_sources, n_bins, T)`` masks in [0, 1]."""
        b, t = x.shape[:2]
        h = self.select(x.flatten(0, 1)).view(b, t, -1)  # (B*T, L, D) -> (B, T, D)
        h, _ = self.lstm(h)  # (B, T, 2H)
        m = torch.sigmoid(self.out(h)).view(b, t, self.n_sources, self.n_bins)  # (B, T, S, F)
        return m.permute(0, 2, 3, 1)


@dataclass
class SplitData:
    """One split, ready for probing.

    Attributes:
        x: ``(R, n_layers, D)`` rows (windows for clip tasks, frames for beat tracking), standardised.
        y: ``(R, ...)`` row targets (class index, multi-hot, standardised regression values, frame beat labels).
        offsets: ``(n_clips + 1,)`` row offsets: clip ``i`` owns rows ``offsets[i]:offsets[i+1]``.
        truth: per-clip ground truth for the metric (class indices / multi-hot / values ``(N, ...)``, or a
            list of beat-time arrays).
        keys: example keys, in clip order.
    """

    x: Tensor
    y: Tensor
    offsets: np.ndarray
    truth: Any
    keys: list[str]

    @property
    def n_clips(self) -> int:
        return len(self.offsets) - 1

    def group(self) -> Tensor:
        """``(R,)`` clip index of every row."""
        return torch.repeat_interleave(torch.arange(self.n_clips), torch.from_numpy(np.diff(self.offsets)))

    def clip_rows(self, clips: np.ndarray) -> Tensor:
        """Row indices of the given clips, concatenated."""
        return torch.cat([torch.arange(self.offsets[c], self.offsets[c + 1]) for c in clips])


def clip_mean(values: Tensor, data: SplitData) -> Tensor:
    """Average row outputs ``(R, K)`` per clip -> ``(n_clips, K)`` (predictions averaged over windows)."""
    group = data.group()
    sums = torch.zeros(data.n_clips, values.shape[1]).index_add_(0, group, values)
    return sums / torch.bincount(group, minlength=data.n_clips).clamp_min(1)[:, None].float()
