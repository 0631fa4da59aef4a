"""Mel-RVQ (MuQ): the fit learns, dead codes revive, save/load round trip, exact resume, aligned labels."""

import dataclasses

import numpy as np
import pytest
import torch

from mert.data import shards as S
from mert.teachers.base import TeacherError, student_frames
from mert.teachers.label_run import label_array
from mert.teachers.mel import compute_mel_stats
from mert.teachers.melrvq import (
    CHECKPOINT_FILE,
    WEIGHTS_FILE,
    MelRVQModel,
    MelRVQSettings,
    MelRVQTeacher,
    ResidualStage,
    fit_melrvq,
)
from tests.teachers.conftest import make_corpus, notes

TINY = MelRVQSettings(
    n_codebooks=2, codebook_size=32, codebook_dim=8, stale_steps=5, lr=3e-3, steps=60, batch_frames=512, seed=0
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("rvqc")
    make_corpus(root, [3.0, 2.5, 4.0, 2.0], music=True)
    return S.Corpus(root)


@pytest.fixture(scope="module")
def stats(corpus):
    return compute_mel_stats(corpus, TINY.spec)


@pytest.fixture(scope="module")
def fitted(corpus, stats, tmp_path_factory):
    return fit_melrvq(corpus, TINY, stats, tmp_path_factory.mktemp("m"), progress=False)


def test_fit_reduces_reconstruction_loss_and_uses_many_codes(fitted):
    info = fitted.fit_info
    assert info["steps"] == 60 and info["tokens"] > 800
    assert info["recon_l1_final"] < 0.7 * info["recon_l1_initial"], info
    first = [h[1] for h in info["history"][:2]]
    assert info["history"][-1][1] < min(first)  # training loss went down too
    usage = info["usage"]
    assert len(usage) == 2 and usage[0]["distinct"] >= 24 and usage[0]["top_share"] < 0.3, usage
    assert usage[1]["distinct"] >= 16


def test_dead_codes_are_replaced_after_stale_steps_and_then_used():
    torch.manual_seed(0)
    stage = ResidualStage(16, 8, 4)
    with torch.no_grad():
        stage.codebook.weight[4:] = -100.0 * torch.ones(4)  # far from everything: dead codes 4..7
        stage.codebook.weight[:4] = torch.eye(4)
    gen = torch.Generator().manual_seed(0)
    z_e = torch.rand(256, 4) + 0.1  # positive latents: never nearest to the dead codes
    for step in range(1, 4):
        codes = stage.lookup(z_e)
        assert int(codes.max()) < 4
        assert stage.replace_stale(codes, z_e, tolerance=3, gen=gen) == (4 if step == 3 else 0)
        assert stage.stale[4:].tolist() == ([float(step)] * 4 if step < 3 else [0.0] * 4)
    revived = stage.codebook.weight[4:]
    assert torch.allclose(revived.norm(dim=-1), torch.ones(4))  # replaced by normalised latents of the batch
    assert set(stage.lookup(z_e).tolist()) & {4, 5, 6, 7}  # and now nearest to some of them


def test_save_load_round_trip_and_tamper_detection(fitted, corpus, tmp_path):
    fitted.save(tmp_path / "m")
    loaded = MelRVQModel.load(tmp_path / "m")
    assert loaded.hash == fitted.hash and loaded.settings == TINY and loaded.stats.hash == fitted.stats.hash
    a, b = MelRVQTeacher(fitted), MelRVQTeacher(loaded)
    assert a.identity() == b.identity() and a.key.startswith("melrvq-")
    x = torch.from_numpy(np.array(corpus.audio(corpus.clips[0])))[None]
    n = torch.tensor([x.shape[1]])
    assert torch.equal(a.encode(x, n), b.encode(x, n))
    state = torch.load(tmp_path / "m" / WEIGHTS_FILE, weights_only=True)
    state["stages.0.codebook.weight"] += 1
    torch.save(state, tmp_path / "m" / WEIGHTS_FILE)
    with pytest.raises(TeacherError, match="do not match the recorded hash"):
        MelRVQModel.load(tmp_path / "m")
    with pytest.raises(TeacherError, match="not a fitted Mel-RVQ"):
        MelRVQModel.load(tmp_path)


def test_killed_fit_resumes_to_the_same_model(corpus, stats, fitted, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit_melrvq(corpus, TINY, stats, tmp_path, checkpoint_every=10, progress=False, stop_after=27)
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["step"] == 27
    resumed = fit_melrvq(corpus, TINY, stats, tmp_path, checkpoint_every=10, progress=False)
    assert resumed.hash == fitted.hash  # bit-identical to the uninterrupted fit
    assert resumed.fit_info["history"] == fitted.fit_info["history"]
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    other = dataclasses.replace(TINY, seed=1)
    with pytest.raises(KeyboardInterrupt):
        fit_melrvq(corpus, TINY, stats, tmp_path / "x", progress=False, stop_after=3)
    with pytest.raises(TeacherError, match="checkpoint of another Mel-RVQ fit"):
        fit_melrvq(corpus, other, stats, tmp_path / "x", progress=False)


def test_fit_is_deterministic(corpus, stats, fitted, tmp_path):
    assert fit_melrvq(corpus, TINY, stats, tmp_path, progress=False).hash == fitted.hash


@pytest.mark.parametrize("seconds, frames", [(3.0, 224), (5.0, 374), (5.12, 383)])
def test_labels_are_aligned_and_windowing_changes_nothing(fitted, seconds, frames):
    t = MelRVQTeacher(fitted, chunk_frames=50)
    x = notes(round(seconds * 24_000), np.random.default_rng(1))
    assert student_frames(x.shape[0]) == frames
    whole = t.encode(torch.from_numpy(x)[None], torch.tensor([x.shape[0]]))
    assert whole.shape[:2] == (1, 2) and whole.shape[2] >= frames and int(whole.max()) < 32
    np.testing.assert_array_equal(label_array(t, x, batch_size=2), whole[0, :, :frames].numpy())
