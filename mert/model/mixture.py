"""In-batch noise mixture (MERT ``inbatch_noise_augment``), vectorised on device and seeded.

The reference (``mert_model.py`` L815-850, L1081-1098) does, per clip i of a batch of B clips of L samples:

- mix with probability 1/2: the code tests ``rand > mixture_prob`` with ``mixture_prob = 0.5``, i.e. the config
  value is the probability of NOT mixing. Here :func:`mix_in_batch` takes ``prob`` = the probability that a
  clip IS mixed (``1 - reference mixture_prob``; both are 0.5 in the released configs, so nothing changes);
- the noise pool is all the OTHER clips of the (clean) batch, flattened and concatenated: (B-1)·L samples,
  so a segment may straddle two neighbouring clips of the pool;
- ``n ~ U{n_min..n_max}`` (1..3) segments, each of length ``d ~ U{len_min..len_max}`` samples
  (12000-24000 for 95M, 12000-36000 for 330M), source start ``s ~ U{0..(B-1)L - len_max}`` (the reference
  draws it against ``len_max``, not ``d``), insertion position ``p ~ U{0..L - d}``;
- segments are added in order at volume 1.0, with no rescaling; overlapping segments add up.

Where the reference raises (B = 1: empty pool; L < d: no room) it leaves the clip clean; here a batch with
B < 2 or L < len_max is returned unmixed.

Targets (RVQ labels, CQT) must be computed from the clean audio BEFORE mixing: the model has to denoise.
:class:`mert.model.pretraining.MERTPretrainingModel` enforces this by taking the clean batch and mixing inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MixtureResult:
    """What :func:`mix_in_batch` did.

    Attributes:
        wav: (B, L) the mixed batch (a new tensor; the input is untouched).
        mixed: (B,) bool, True where a clip received noise.
        active: (B, S) bool, segment slot s of clip b was added (S = n_max; False for unmixed clips).
        length: (B, S) long, segment lengths in samples.
        src_start: (B, S) long, start of each segment in that clip's pool of (B-1)·L samples.
        position: (B, S) long, insertion position in the clip.
    """

    wav: torch.Tensor
    mixed: torch.Tensor
    active: torch.Tensor
    length: torch.Tensor
    src_start: torch.Tensor
    position: torch.Tensor


def _randint(low: int | torch.Tensor, high: int | torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Map uniforms ``u`` in [0, 1) to integers uniform on ``[low, high]`` (inclusive, elementwise)."""
    return (low + (u * (high - low + 1)).floor()).long().clamp(max=high)


def pool_gather_index(clip: torch.Tensor, pool_pos: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map positions in clip b's noise pool (the other clips, concatenated) to (source clip, sample) indices.

    Args:
        clip: (B, 1) long, the clip that owns each pool.
        pool_pos: (B, N) long, positions in that clip's pool, in ``[0, (B-1)·L)``.
        length: L, samples per clip.

    Returns:
        (src_clip (B, N), src_sample (B, N)) long tensors: pool slot j skips the owner clip.
    """
    other = torch.div(pool_pos, length, rounding_mode="floor")  # (B, N) index among the B-1 other clips
    src_clip = other + (other >= clip).long()  # skip the owner clip
    return src_clip, pool_pos % length


def mix_in_batch(
    wav: torch.Tensor,
    prob: float = 0.5,
    len_range: tuple[int, int] = (12000, 24000),
    n_range: tuple[int, int] = (1, 3),
    volume: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> MixtureResult:
    """Add 1-3 random segments of the other clips of the batch to each clip with probability ``prob``.

    Call it on the CLEAN batch after the targets were computed from it (see the module docstring).

    Args:
        wav: (B, L) float waveforms (clean).
        prob: Probability that a clip is mixed (0.5 in MERT; see the note on the reference's inverted flag).
        len_range: Inclusive (min, max) segment length in samples.
        n_range: Inclusive (min, max) number of segments per mixed clip.
        volume: Gain of the added segments (1.0 in MERT: no SNR control, no rescaling).
        generator: Optional torch.Generator on ``wav.device`` for reproducible draws.

    Returns:
        A :class:`MixtureResult`; ``result.wav`` is the mixed (B, L) batch.
    """
    if wav.dim() != 2:
        raise ValueError(f"wav must be (batch, samples), got {tuple(wav.shape)}")
    B, L = wav.shape
    len_min, len_max = len_range
    n_min, n_max = n_range
    if not (1 <= len_min <= len_max and 0 <= n_min <= n_max):
        raise ValueError(f"bad ranges: len_range={len_range}, n_range={n_range}")
    dev = wav.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=dev)

    # All draws happen unconditionally so the random stream does not depend on the data.
    mixed = rand(B) < prob  # (B,)
    n_seg = _randint(n_min, n_max, rand(B))  # (B,)
    length = _randint(len_min, len_max, rand(B, n_max))  # (B, S)
    pool_len = (B - 1) * L
    src_start = _randint(0, max(pool_len - len_max, 0), rand(B, n_max))  # (B, S)
    position = _randint(0, L - length, rand(B, n_max))  # (B, S)
    usable = B >= 2 and L >= len_max
    mixed = mixed & usable
    active = mixed.unsqueeze(1) & (torch.arange(n_max, device=dev) < n_seg.unsqueeze(1))  # (B, S)
    out = wav.clone()
    if bool(active.any()):
        out = _add_segments(out, wav, active, length, src_start, position, volume)
    return MixtureResult(out, mixed, active, length, src_start, position)


@torch.no_grad()
def _add_segments(
    out: torch.Tensor,
    clean: torch.Tensor,
    active: torch.Tensor,
    length: torch.Tensor,
    src_start: torch.Tensor,
    position: torch.Tensor,
    volume: float,
) -> torch.Tensor:
    """Add segment slots one at a time (same order and float ops as the reference loop), batched over clips."""
    B, L = clean.shape
    t = torch.arange(L, device=clean.device).unsqueeze(0)  # (1, L)
    owner = torch.arange(B, device=clean.device).unsqueeze(1)  # (B, 1)
    for s in range(active.shape[1]):
        rel = t - position[:, s : s + 1]  # (B, L) offset inside segment s
        inside = active[:, s : s + 1] & (rel >= 0) & (rel < length[:, s : s + 1])  # (B, L)
        pool_pos = (src_start[:, s : s + 1] + rel).clamp(0, max((B - 1) * L - 1, 0))  # (B, L)
        src_clip, src_sample = pool_gather_index(owner, pool_pos, L)
        noise = clean[src_clip.clamp(max=B - 1), src_sample]  # (B, L)
        out = torch.where(inside, out + volume * noise, out)
    return out
