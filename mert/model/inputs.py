"""What :class:`mert.model.MERT` accepts: input checks and padded batches (the Hugging Face call style).

HF MERT code calls ``model(input_values=x, attention_mask=m, output_hidden_states=True)`` with ``x`` and ``m``
from ``Wav2Vec2FeatureExtractor(clips, sampling_rate=24000, padding=True, return_tensors="pt")``:

* ``x``: (B, L) float mono audio at 24 kHz, each clip right-padded with zeros to the longest clip's L samples;
* ``m``: (B, L) 1 (or True) on each clip's own samples, 0 on its padding (right padding only).

:func:`check_waveform` turns a wrong layout into a ``ValueError`` that names the expected one before any compute
(a 1-D clip, a channel-last ``(samples, channels)`` array as ``soundfile.read`` returns it, integer PCM, fewer
than ``config.receptive_field`` = 400 samples). :func:`clip_lengths` validates ``m`` and gives each clip's length;
:func:`normalize_padded` is ``Wav2Vec2FeatureExtractor``'s per-clip normalisation computed over each clip's own
samples (padding set to 0, as the HF extractor does); :func:`frame_mask` marks each clip's frames: frame ``t`` of
a clip of ``n`` samples is valid iff ``t < config.num_frames(n)``, i.e. its 400-sample receptive field lies inside
the clip.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mert.model.config import MERTConfig

NORM_EPS = 1e-7
"""Epsilon of the per-clip input normalisation (``Wav2Vec2FeatureExtractor``)."""


def expected_layout(cfg: MERTConfig) -> str:
    """The sentence every input error ends with."""
    rate = cfg.sample_rate / 1000
    return (
        f"expected float mono audio at {rate:g} kHz shaped (batch, samples) with at least {cfg.receptive_field} "
        f"samples per clip ({1000 * cfg.receptive_field / cfg.sample_rate:.1f} ms, one frame)"
    )


def check_waveform(wav, cfg: MERTConfig) -> Tensor:
    """Validate the model input (shape, dtype, length) without computing anything on it.

    Args:
        wav: (B, L) float audio at ``cfg.sample_rate`` (a tensor, or a NumPy array converted with ``torch.as_tensor``).
        cfg: the model config (rate, minimum length).

    Returns:
        ``wav`` as a tensor.

    Raises:
        ValueError: not 2-D, a channel-last ``(samples, channels)`` array, integer samples, an empty batch, or
            fewer than ``cfg.receptive_field`` samples; the message names the expected layout.
    """
    if isinstance(wav, np.ndarray):
        wav = torch.as_tensor(wav)
    if not isinstance(wav, Tensor):
        raise ValueError(f"got a {type(wav).__name__}; {expected_layout(cfg)} as a torch.Tensor")
    shape, need = tuple(wav.shape), cfg.receptive_field
    if wav.dim() == 1:
        raise ValueError(f"got a 1-D tensor of {shape[0]} samples; {expected_layout(cfg)}: add the batch axis "
                         "with wav[None]")  # fmt: skip
    if wav.dim() != 2:
        hint = "; squeeze the channel axis (wav[:, 0]) or downmix (wav.mean(1))" if wav.dim() == 3 else ""
        raise ValueError(f"got shape {shape}; {expected_layout(cfg)}{hint}")
    if not wav.is_floating_point():
        raise ValueError(f"got {wav.dtype} samples; {expected_layout(cfg)} (scale int16 PCM by 1/32768)")
    if shape[0] == 0:
        raise ValueError(f"got an empty batch {shape}; {expected_layout(cfg)}")
    if shape[1] < need:
        if shape[0] >= need and shape[1] <= 8:
            raise ValueError(
                f"got shape {shape}, which looks like channel-last (samples, channels) audio as soundfile.read "
                f"returns it; {expected_layout(cfg)}: downmix and add the batch axis, e.g. "
                "torch.from_numpy(x.mean(axis=1))[None]"
            )
        raise ValueError(f"got shape {shape}: {shape[1]} samples is too short; {expected_layout(cfg)}")
    return wav


def clip_lengths(attention_mask, wav: Tensor, cfg: MERTConfig) -> Tensor | None:
    """Each clip's number of samples from an HF sample-level ``attention_mask``, or None when nothing is padded.

    Args:
        attention_mask: (B, L) 1/True on a clip's samples, 0/False on its right padding (bool, int or float).
        wav: the (B, L) input it belongs to.
        cfg: the model config (minimum length).

    Returns:
        (B,) int64 lengths on ``wav``'s device, or None if every clip fills all L samples (the unpadded path).

    Raises:
        ValueError: a shape other than ``wav``'s, values other than 0/1, left or interior padding, or a clip
            shorter than ``cfg.receptive_field`` samples.
    """
    if attention_mask is None:
        return None
    m = torch.as_tensor(attention_mask, device=wav.device)
    if tuple(m.shape) != tuple(wav.shape):
        raise ValueError(
            f"attention_mask shape {tuple(m.shape)} != input shape {tuple(wav.shape)}: it must mark the samples "
            "(batch, samples), 1 on each clip's audio and 0 on its padding"
        )
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("attention_mask must hold only 0 and 1 (1 = the clip's samples, 0 = padding)")
        m = m != 0
    if bool((m[:, 1:] & ~m[:, :-1]).any()):
        raise ValueError(
            "attention_mask must be right padding (each row ones then zeros); left or interior padding is not "
            "supported (Wav2Vec2FeatureExtractor's padding_side='right', the MERT default)"
        )
    lengths = m.sum(1)  # (B,)
    short = (lengths < cfg.receptive_field).nonzero().flatten().tolist()
    if short:
        got = ", ".join(f"clip {i}: {int(lengths[i])}" for i in short[:5])
        raise ValueError(f"attention_mask leaves too few samples ({got}); {expected_layout(cfg)}")
    return None if bool((lengths == wav.shape[1]).all()) else lengths


def normalize_padded(wav: Tensor, lengths: Tensor) -> Tensor:
    """Per-clip ``(x - mean) / sqrt(var + 1e-7)`` over each clip's first ``lengths[b]`` samples; padding -> 0.

    This is ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`` with an attention mask (population variance).

    Args:
        wav: (B, L) audio.
        lengths: (B,) valid samples per clip.

    Returns:
        (B, L) normalised audio, exactly 0 on the padding.
    """
    valid = torch.arange(wav.shape[1], device=wav.device)[None] < lengths[:, None]  # (B, L)
    n = lengths[:, None].to(wav.dtype)
    x = torch.where(valid, wav, 0)
    mean = x.sum(-1, keepdim=True) / n
    var = torch.where(valid, wav - mean, 0).pow(2).sum(-1, keepdim=True) / n
    return torch.where(valid, (wav - mean) / torch.sqrt(var + NORM_EPS), 0)


def frame_mask(lengths: Tensor, cfg: MERTConfig, frames: int) -> Tensor:
    """(B, T) bool, True on the frames whose receptive field lies inside each clip (``t < num_frames(lengths[b])``).

    Args:
        lengths: (B,) valid samples per clip.
        cfg: the model config (conv arithmetic).
        frames: T, the frame count of the padded batch.
    """
    counts = torch.tensor([cfg.num_frames(int(n)) for n in lengths.tolist()], device=lengths.device)  # (B,)
    return torch.arange(frames, device=lengths.device)[None] < counts[:, None]
