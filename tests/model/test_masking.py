"""Span masking: fairseq ``compute_mask_indices`` semantics (static spans, overlap, min_masks, same counts)."""

import numpy as np
import pytest
import torch

from mert.model.masking import compute_span_mask, num_spans


def fairseq_mask(batch: int, frames: int, p: float, length: int, min_masks: int, rng: np.random.Generator):
    """Direct numpy port of fairseq ``compute_mask_indices`` (static, no padding, overlap, same masks)."""
    n = max(min_masks, int(p * frames / float(length) + rng.random()))
    rows = []
    for _ in range(batch):
        min_len = length
        if frames - min_len <= n:
            min_len = frames - n - 1
        starts = rng.choice(frames - min_len, n, replace=False)
        idc = np.asarray([s + o for s in starts for o in range(length)])
        rows.append(np.unique(idc[idc < frames]))
    keep = min(len(r) for r in rows)
    mask = np.zeros((batch, frames), dtype=bool)
    for i, r in enumerate(rows):
        mask[i, rng.choice(r, keep, replace=False) if len(r) > keep else r] = True
    return mask


def test_masked_fraction_at_5s_matches_reference_and_fairseq():
    g = torch.Generator().manual_seed(0)
    ours = torch.stack([compute_span_mask(4, 374, 0.8, 5, 2, generator=g).float().mean() for _ in range(300)])
    rng = np.random.default_rng(0)
    ref = np.mean([fairseq_mask(4, 374, 0.8, 5, 2, rng).mean() for _ in range(300)])
    assert 0.55 <= ours.mean().item() <= 0.58  # reference section 3: "roughly 55-58% of frames"
    assert abs(ours.mean().item() - ref) < 0.006  # same distribution as the fairseq algorithm


def test_single_clip_fraction_without_thinning_matches_fairseq():
    g = torch.Generator().manual_seed(1)
    ours = np.mean([compute_span_mask(1, 374, generator=g).float().mean().item() for _ in range(300)])
    rng = np.random.default_rng(1)
    ref = np.mean([fairseq_mask(1, 374, 0.8, 5, 2, rng).mean() for _ in range(300)])
    assert abs(ours - ref) < 0.006


def test_rows_have_equal_counts_and_are_unions_of_spans():
    g = torch.Generator().manual_seed(2)
    mask = compute_span_mask(8, 374, generator=g)
    counts = mask.sum(1)
    assert (counts == counts[0]).all()
    # Without the thinning step every maximal masked run is at least one span long.
    raw = compute_span_mask(6, 200, require_same_masks=False, generator=g)
    for row in raw.int().tolist():
        runs, cur = [], 0
        for v in row + [0]:
            if v:
                cur += 1
            elif cur:
                runs.append(cur)
                cur = 0
        assert runs and min(runs) >= 5


def test_min_masks_holds():
    g = torch.Generator().manual_seed(3)
    # mask_prob so small that the rounded span count is 0 or 1: min_masks=2 spans of length 1 each.
    for _ in range(20):
        mask = compute_span_mask(5, 100, mask_prob=0.001, mask_length=1, min_masks=2, generator=g)
        assert (mask.sum(1) == 2).all()
    mask = compute_span_mask(3, 50, mask_prob=0.01, mask_length=5, min_masks=2, generator=g)
    assert (mask.sum(1) >= 6).all()  # two distinct starts -> at least 6 frames


def test_num_spans_rounding():
    assert num_spans(374, 0.8, 5, 2, 0.0) == 59 and num_spans(374, 0.8, 5, 2, 0.99) == 60
    assert num_spans(5, 0.8, 5, 2, 0.5) == 2


@pytest.mark.parametrize("frames", [6, 8, 12])
def test_short_clips_follow_fairseq_shortened_range(frames):
    g = torch.Generator().manual_seed(4)
    mask = compute_span_mask(4, frames, generator=g)
    assert mask.shape == (4, frames) and (mask.sum(1) >= 1).all()


def test_seeded_and_device():
    a = compute_span_mask(4, 374, generator=torch.Generator().manual_seed(7))
    b = compute_span_mask(4, 374, generator=torch.Generator().manual_seed(7))
    c = compute_span_mask(4, 374, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.bool and a.device.type == "cpu"
