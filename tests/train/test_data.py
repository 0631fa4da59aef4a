import multiprocessing
import pickle

import numpy as np
import pytest
import torch

from mert.data.shards import Corpus
from mert.teachers.base import student_frames
from mert.train.data import CropSampler, PretrainLoader, loader_throughput
from mert.train.labels import HashLabels


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return Corpus(corpus_dir)


def sampler(corpus, **kw):
    args = dict(crop_samples=9600, min_clip_samples=24000, micro_batch_clips=2, world_size=1, grad_accum=1, seed=3)
    args.update(kw)
    return CropSampler(corpus, HashLabels(8, 1024), **args)


def test_batch_shapes_alignment_and_labels(corpus):
    s = sampler(corpus)
    b = s.batch(0, 0)
    L = b.wav.shape[1]
    assert b.wav.shape == (2, 9600) and b.labels.shape == (2, 8, student_frames(L)) and b.labels.dtype == torch.long
    # The crop is the clip's audio at a 320-aligned start, and its labels are the clip's labels from start // 320.
    clip = s.clip_at(s.positions(0, 0)[0])
    full = s.corpus.audio(clip)
    starts = [i for i in range(0, clip.length - L + 1, 320) if np.array_equal(full[i : i + L], b.wav[0].numpy())]
    assert starts, "crop not found at a 320-aligned offset"
    whole = HashLabels(8, 1024).crop(clip, 0, clip.length)
    m = starts[0] // 320
    assert np.array_equal(b.labels[0].numpy(), whole[:, m : m + student_frames(L)])


def test_short_clips_dropped_and_batch_cropped_to_shortest(corpus):
    lengths = sorted(c.length for c in corpus.clips)
    s = sampler(corpus, min_clip_samples=lengths[2], crop_samples=10**7 // 320 * 320)
    assert len(s.clips) == len(corpus.clips) - 2 and min(c.length for c in s.clips) >= lengths[2]
    b = s.batch(0, 0)
    shortest = min(c.length for c in (s.clip_at(p) for p in s.positions(0, 0)))
    assert b.wav.shape[1] == shortest // 320 * 320  # no padding: cropped to the shortest clip, whole frames
    with pytest.raises(ValueError, match="no clip"):
        sampler(corpus, min_clip_samples=lengths[-1] + 1)


def test_epochs_are_seeded_permutations(corpus):
    s = sampler(corpus)
    n = len(s.clips)
    epoch0 = [s.clip_at(p).id for p in range(n)]
    epoch1 = [s.clip_at(p).id for p in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(c.id for c in s.clips) == sorted(epoch1)  # every clip once per epoch
    assert epoch0 != epoch1
    assert epoch0 == [sampler(corpus).clip_at(p).id for p in range(n)]  # same seed, same order
    assert epoch0 != [sampler(corpus, seed=4).clip_at(p).id for p in range(n)]


def test_rank_sharding_equals_accumulation_slots(corpus):
    """2 ranks x 1 micro-batch see exactly what 1 rank x 2 accumulated micro-batches sees."""
    single = PretrainLoader(sampler(corpus, grad_accum=2), rank=0, world_size=1, prefetch=0)
    ranks = [PretrainLoader(sampler(corpus, world_size=2), rank=r, world_size=2, prefetch=0) for r in range(2)]
    for step in range(3):
        acc = single.step_batches(step)
        for r in range(2):
            (mine,) = ranks[r].step_batches(step)
            assert mine.clip_ids == acc[r].clip_ids and torch.equal(mine.wav, acc[r].wav)
    # Rank r takes every world-th sample of the step's global batch.
    s = sampler(corpus, world_size=2)
    assert s.positions(1, 0) == [4, 6] and s.positions(1, 1) == [5, 7]


@pytest.mark.parametrize("prefetch,workers", [(0, 0), (2, 0), (2, 2)])
def test_loader_resumes_with_the_same_order(corpus, prefetch, workers):
    ref = PretrainLoader(sampler(corpus), prefetch=prefetch, workers=workers)
    it = iter(ref)
    seen = [next(it) for _ in range(5)]
    it.close()
    state = None
    loader = PretrainLoader(sampler(corpus), prefetch=prefetch, workers=workers)
    it2 = iter(loader)
    for _ in range(2):
        next(it2)
    it2.close()
    state = loader.state_dict()
    resumed = PretrainLoader(sampler(corpus), prefetch=prefetch, workers=workers)
    resumed.load_state_dict(state)
    it3 = iter(resumed)
    for want in seen[2:]:
        got = next(it3)
        assert [b.clip_ids for b in got] == [b.clip_ids for b in want]
        assert all(torch.equal(a.wav, b.wav) and torch.equal(a.labels, b.labels) for a, b in zip(got, want))
    it3.close()
    assert resumed.state_dict()["next_step"] == 5
    other = PretrainLoader(sampler(corpus, seed=9))
    with pytest.raises(RuntimeError, match="data stream changed"):
        other.load_state_dict(state)


def assert_same(got, want):
    """Steps of micro-batches equal in every field, bit for bit."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [(b.step, b.slot, b.clip_ids) for b in g] == [(b.step, b.slot, b.clip_ids) for b in w]
        assert all(torch.equal(a.wav, b.wav) and torch.equal(a.labels, b.labels) for a, b in zip(g, w))
        assert all(a.labels.dtype == torch.long and a.wav.dtype == torch.float32 for a in g)


@pytest.mark.parametrize("workers", [1, 2])
def test_loader_processes_deliver_exactly_the_in_process_stream(corpus, workers):
    """Any worker count: the same micro-batches (per rank, accumulation slots included) in the same order, from any
    data position; a crop shorter than crop_samples (a short clip in the batch) included."""
    short = sampler(corpus, crop_samples=10**6 // 320 * 320, world_size=2, grad_accum=2)  # cropped to the shortest
    for s in (sampler(corpus, world_size=2, grad_accum=2), short):
        for rank in range(2):
            ref = PretrainLoader(s, rank=rank, world_size=2, prefetch=0)
            want = [ref.step_batches(step) for step in range(3, 9)]
            loader = PretrainLoader(s, rank=rank, world_size=2, prefetch=1, workers=workers)
            loader.next_step = 3
            it = iter(loader)
            got = [next(it) for _ in range(6)]
            it.close()
            assert_same(got, want)
            assert loader.state_dict()["next_step"] == 9
    assert {b.wav.shape[1] for step in got for b in step} != {9600}


def test_loader_processes_stop_when_the_iterator_closes(corpus):
    it = iter(PretrainLoader(sampler(corpus), workers=2))
    next(it)
    assert len(multiprocessing.active_children()) >= 2
    it.close()
    assert multiprocessing.active_children() == []


class FailingLabels(HashLabels):
    """Labels that raise for one clip, as a damaged label file does."""

    def __init__(self, bad: str):
        super().__init__(8, 1024)
        self.bad = bad

    def crop(self, clip, start, length):
        if clip.id == self.bad:
            raise RuntimeError(f"labels of clip {clip.id} are unreadable (test)")
        return super().crop(clip, start, length)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_errors_reach_the_training_loop_with_their_message(corpus, workers):
    s = sampler(corpus)
    bad = s.clip_at(s.positions(2, 0)[1]).id
    s.labels = FailingLabels(bad)
    it = iter(PretrainLoader(s, prefetch=2, workers=workers))
    with pytest.raises(RuntimeError, match=f"labels of clip {bad} are unreadable"):
        for _ in range(4):
            next(it)
    it.close()


class ShortLabels(HashLabels):
    """A label source one frame short of the crop (labels of another frame rate or alignment)."""

    def crop(self, clip, start, length):
        return super().crop(clip, start, length)[:, :-1]


def test_label_shape_mismatch_is_named(corpus):
    s = sampler(corpus)
    s.labels = ShortLabels(8, 1024)
    with pytest.raises(ValueError, match=r"labels of clip \w+ .*shape \(8, 28\), expected \(8, 29\)"):
        s.batch(0, 0)


def test_sampler_pickles_without_its_memory_maps(corpus):
    """What a spawned loader process receives: the sampler, its shards reopened there (never their bytes)."""
    s = sampler(corpus)
    s.batch(0, 0)  # opens the memory maps
    blob = pickle.dumps(s)
    assert len(blob) < 100_000 < sum(c.length * 4 for c in corpus.clips)
    again = pickle.loads(blob)
    b, want = again.batch(4, 0), s.batch(4, 0)
    assert torch.equal(b.wav, want.wav) and torch.equal(b.labels, want.labels)


def test_ring_slot_refuses_a_batch_it_does_not_hold(corpus):
    from mert.train.data import _Ring

    ring = _Ring(sampler(corpus), rank=0, world=1, accum=1, n_slots=3)
    item = ring[4, 1]  # built in this process, into slot 1
    assert torch.equal(ring.take(item, 4, pin=False).wav, sampler(corpus).batch(4, 0).wav)
    with pytest.raises(RuntimeError, match="expected 5"):
        ring.take(item, 5, pin=False)
    ring[7, 1]  # slot 1 again, now holding micro-batch 7
    with pytest.raises(RuntimeError, match="slot 1 holds micro-batch 7, expected 4"):
        ring.take(item, 4, pin=False)


def test_a_slot_is_reused_only_when_no_tensor_views_it(corpus):
    """Without pinning a batch is handed out as views of its shared slot: the slot returns to the free list when
    the last tensor sharing its memory dies (a slice of the batch included), not before."""
    from mert.train.data import _Ring

    ring = _Ring(sampler(corpus), rank=0, world=1, accum=1, n_slots=2)
    a, b = ring.acquire(), ring.acquire()
    assert ring.acquire() == -1 and ring.fallbacks == 1  # none free: the index goes without a slot
    batch = ring.take(ring[0, a], 0, pin=False)
    part = batch.wav[1, 100:200]  # a view that outlives the batch
    want = part.clone()
    del batch
    assert ring.acquire() == -1  # still viewed
    ring.take(ring[1, b], 1, pin=False)  # dropped at once: slot b is free again
    assert ring.acquire() == b
    del part
    assert ring.acquire() == a
    ring.release(a)
    ring[5, a]  # slot a rewritten
    assert not torch.equal(ring.take(ring[5, a], 5, pin=False).wav[1, 100:200], want)


def test_a_caller_keeping_every_batch_gets_correct_batches(corpus):
    """More batches kept than the ring has slots: the loader falls back to batches without a slot (never stuck,
    never a reused slot under a kept batch)."""
    s = sampler(corpus, grad_accum=2)
    want = [PretrainLoader(s, prefetch=0).step_batches(step) for step in range(12)]
    loader = PretrainLoader(s, prefetch=1, workers=2)
    it = iter(loader)
    got = [next(it) for _ in range(12)]  # 24 micro-batches kept; the ring has 2 * 1 + 1 + 4 * 2 + 1 = 12 slots
    it.close()
    assert_same(got, want)
    assert loader._ring.fallbacks > 0
    it = iter(loader)
    for _ in range(30):  # a caller that lets each step go, as the trainer does: every batch comes from a slot
        next(it)
    it.close()
    assert loader._ring.fallbacks == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_throughput_reports_rates(corpus, workers):
    rates = loader_throughput(PretrainLoader(sampler(corpus), prefetch=0, workers=workers), n_steps=5, warmup=1)
    assert rates["batches_per_sec"] > 0 and rates["audio_sec_per_sec"] > 0 and rates["startup_sec"] > 0


def test_holdout_split_is_disjoint_seeded_and_off_by_default(corpus):
    from mert.train.data import holdout_split

    train, val = holdout_split(corpus.clips, 2, 24000, seed=3)
    assert len(val) == 2 and len(train) == len(corpus.clips) - 2
    assert not {c.id for c in train} & {c.id for c in val}
    assert holdout_split(corpus.clips, 2, 24000, seed=3) == (train, val)
    s = sampler(corpus, clips=train)
    seen = {s.clip_at(p).id for p in range(4 * len(corpus.clips))}
    assert seen == {c.id for c in train}
    # 0 held out: the stream of the default sampler, bit for bit
    all_train, all_val = holdout_split(corpus.clips, 0, 24000, seed=3)
    assert all_train == all_val == corpus.clips
    assert sampler(corpus, clips=all_train).fingerprint() == sampler(corpus).fingerprint()
    with pytest.raises(ValueError, match="hold out"):
        holdout_split(corpus.clips, len(corpus.clips), 24000, seed=3)


def test_data_stream_change_names_the_field(corpus):
    state = PretrainLoader(sampler(corpus)).state_dict()
    with pytest.raises(RuntimeError, match=r"data stream changed since the checkpoint: data seed 3 -> 9;"):
        PretrainLoader(sampler(corpus, seed=9)).load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"crop_samples 9600 -> 6400;"):
        PretrainLoader(sampler(corpus, crop_samples=6400)).load_state_dict(state)
    fewer = sampler(corpus, clips=corpus.clips[1:])
    with pytest.raises(RuntimeError, match=r"training clips \(ids, in corpus order\) sha256 \w{12} -> \w{12}, number "
                       r"of training clips (\d+) -> (\d+);"):  # fmt: skip
        PretrainLoader(fewer).load_state_dict(state)
    legacy = {k: v for k, v in state.items() if k != "stream"}  # a checkpoint from before the named fields
    with pytest.raises(RuntimeError, match="predates named fields"):
        PretrainLoader(sampler(corpus, seed=9)).load_state_dict(legacy)
