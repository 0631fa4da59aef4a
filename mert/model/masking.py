"""Span masking for masked prediction (HuBERT / MERT), vectorised in torch.

A re-implementation of fairseq's ``compute_mask_indices`` for the case MERT uses: static span lengths,
overlap allowed, no padding (equal-length batches; MERT crops a batch to its shortest clip). The reference
calls it with ``mask_prob=0.8, mask_length=5, min_masks=2`` (``mert_model.py`` ``apply_mask``).

The fairseq algorithm, reproduced step by step:

1. ``num_mask = max(min_masks, int(mask_prob * T / mask_length + U))`` with ONE ``U ~ U[0, 1)`` for the
   whole batch (probabilistic rounding).
2. Per clip, draw ``num_mask`` *distinct* span starts uniformly from ``[0, T - mask_length]`` (so spans never
   run past the end) and mask ``mask_length`` frames from each start; spans may overlap.
3. ``require_same_masks``: every clip is randomly thinned down to the smallest masked-frame count of the
   batch, so all clips have exactly the same number of masked frames.

At T = 374 (5 s at 75 Hz) about 60 spans are drawn and 55-58% of the frames end up masked.
"""

from __future__ import annotations

import torch


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def num_spans(frames: int, mask_prob: float, mask_length: int, min_masks: int, u: float) -> int:
    """Spans per clip, fairseq's probabilistic rounding: ``max(min_masks, int(p * T / l + u))``."""
    return max(min_masks, int(mask_prob * frames / float(mask_length) + u))


def compute_span_mask(
    batch: int,
    frames: int,
    mask_prob: float = 0.8,
    mask_length: int = 5,
    min_masks: int = 2,
    *,
    require_same_masks: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sample a span mask, equivalent in distribution to fairseq ``compute_mask_indices`` (static, overlap).

    Args:
        batch: Number of clips B.
        frames: Number of frames T per clip.
        mask_prob: Expected fraction of frames that are span *starts* times ``mask_length`` (0.8 in MERT).
        mask_length: Span length in frames (5 in MERT, about 67 ms at 75 Hz).
        min_masks: Minimum number of spans per clip (2 in MERT).
        require_same_masks: Thin every clip to the batch's smallest masked count, as fairseq does.
        generator: Optional torch.Generator (on ``device``) for reproducible masks.
        device: Device of the returned mask (defaults to the generator's device, else CPU).

    Returns:
        BoolTensor (B, T), True on masked frames.
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if batch == 0 or frames == 0 or mask_prob <= 0:
        return torch.zeros(batch, frames, dtype=torch.bool, device=device)
    u = float(_uniform((1,), generator, device).item())
    n_spans = num_spans(frames, mask_prob, mask_length, min_masks, u)
    span = mask_length
    if frames - span <= n_spans:  # fairseq: shorten the start range so enough distinct starts exist
        span = frames - n_spans - 1
    n_starts = frames - span  # candidate starts 0 .. n_starts-1
    if n_spans > n_starts:
        raise ValueError(f"cannot place {n_spans} distinct spans in {frames} frames")
    # Distinct starts per clip: the n_spans smallest of n_starts iid uniforms (a random subset).
    keys = _uniform((batch, n_starts), generator, device)  # (B, n_starts)
    starts = keys.topk(n_spans, dim=1, largest=False).indices  # (B, n_spans)
    offsets = torch.arange(mask_length, device=device)  # (l,)
    idx = (starts.unsqueeze(-1) + offsets).reshape(batch, -1)  # (B, n_spans * l)
    # fairseq drops indices >= T (possible only when the start range was shortened): scatter into a padded row.
    mask = torch.zeros(batch, frames + mask_length, dtype=torch.bool, device=device)
    mask.scatter_(1, idx, True)
    mask = mask[:, :frames]  # (B, T)
    if require_same_masks:
        mask = _thin_to_min_count(mask, generator)
    return mask


def _thin_to_min_count(mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Randomly unmask frames so every row keeps exactly ``min_b(mask[b].sum())`` masked frames.

    Args:
        mask: BoolTensor (B, T).
        generator: Optional torch.Generator on ``mask.device``.

    Returns:
        BoolTensor (B, T) with equal row sums; each row a uniform random subset of the input row.
    """
    counts = mask.sum(dim=1)  # (B,)
    keep = int(counts.min().item())
    if bool((counts == keep).all()):
        return mask
    # Masked frames get a random key in [0, 1), the others 2: the `keep` smallest keys are a uniform subset.
    keys = torch.where(mask, _uniform(tuple(mask.shape), generator, mask.device), 2.0)  # (B, T)
    chosen = keys.topk(keep, dim=1, largest=False).indices  # (B, keep)
    out = torch.zeros_like(mask)
    out.scatter_(1, chosen, True)
    return out
