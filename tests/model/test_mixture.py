"""In-batch noise mixture: exact reconstruction, never self, ranges, seeding, probability."""

import torch

from mert.model.mixture import mix_in_batch


def reference_mix(clean: torch.Tensor, res) -> torch.Tensor:
    """The reference loop (``inbatch_noise_augment``) replayed with the drawn segments."""
    out = clean.clone()
    for b in range(clean.shape[0]):
        pool = torch.cat([clean[:b], clean[b + 1 :]]).flatten()  # the other clips, concatenated
        for s in range(res.active.shape[1]):
            if res.active[b, s]:
                d, p, src = int(res.length[b, s]), int(res.position[b, s]), int(res.src_start[b, s])
                out[b, p : p + d] += pool[src : src + d]
    return out


def test_mixed_equals_clean_plus_exact_pool_segments():
    clean = torch.randn(5, 3000)
    res = mix_in_batch(clean, 0.5, (200, 600), (1, 3), generator=torch.Generator().manual_seed(0))
    assert res.mixed.any() and (~res.mixed).any()
    assert torch.equal(res.wav, reference_mix(clean, res))  # unit volume, no rescaling, exact copies
    assert torch.equal(res.wav[~res.mixed], clean[~res.mixed])
    assert not torch.equal(res.wav, clean)


def test_clip_is_never_mixed_with_itself():
    B, L = 6, 1000
    # Sample t of clip j holds the value 1 + j * L + t, so each added sample names its source clip exactly.
    clean = (1 + torch.arange(B * L, dtype=torch.float64)).view(B, L)
    for seed in range(10):
        res = mix_in_batch(clean, 1.0, (100, 300), (1, 1), generator=torch.Generator().manual_seed(seed))
        delta = res.wav - clean  # (B, L), exactly one segment per clip
        for b in range(B):
            added = delta[b][delta[b] != 0]
            src_clip, src_t = ((added - 1) // L).long(), ((added - 1) % L).long()
            assert len(added) == int(res.length[b, 0]) and (src_clip != b).all()
            pool_pos = (src_clip - (src_clip > b).long()) * L + src_t  # position in the pool without clip b
            assert (pool_pos.diff() == 1).all() and pool_pos[0] == res.src_start[b, 0]  # one contiguous segment


def test_segment_counts_lengths_positions_in_range():
    L = 40000
    res = mix_in_batch(torch.zeros(8, L), 1.0, (12000, 24000), (1, 3), generator=torch.Generator().manual_seed(1))
    n = res.active.sum(1)
    assert res.mixed.all() and ((n >= 1) & (n <= 3)).all()
    act = res.active
    assert ((res.length[act] >= 12000) & (res.length[act] <= 24000)).all()
    assert ((res.position[act] >= 0) & (res.position[act] + res.length[act] <= L)).all()
    assert ((res.src_start[act] >= 0) & (res.src_start[act] + 24000 <= 7 * L)).all()


def test_probability_is_half_and_counts_uniform():
    g = torch.Generator().manual_seed(2)
    mixed, counts = [], []
    for _ in range(40):
        res = mix_in_batch(torch.zeros(64, 300), 0.5, (50, 100), (1, 3), generator=g)
        mixed.append(res.mixed.float())
        counts.append(res.active.sum(1)[res.mixed])
    assert abs(torch.cat(mixed).mean().item() - 0.5) < 0.025
    counts = torch.cat(counts)
    for k in (1, 2, 3):
        assert abs((counts == k).float().mean().item() - 1 / 3) < 0.04


def test_seeded_and_input_untouched():
    clean = torch.randn(4, 5000)
    before = clean.clone()
    a = mix_in_batch(clean, 0.5, (100, 900), generator=torch.Generator().manual_seed(3)).wav
    b = mix_in_batch(clean, 0.5, (100, 900), generator=torch.Generator().manual_seed(3)).wav
    c = mix_in_batch(clean, 0.5, (100, 900), generator=torch.Generator().manual_seed(4)).wav
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(clean, before)


def test_unusable_batches_stay_clean():
    one = mix_in_batch(torch.randn(1, 5000), 1.0, (100, 900), generator=torch.Generator().manual_seed(0))
    short = mix_in_batch(torch.randn(3, 500), 1.0, (100, 900), generator=torch.Generator().manual_seed(0))
    assert not one.mixed.any() and not short.mixed.any()
