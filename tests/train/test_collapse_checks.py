"""The checks behind docs/results/collapse.md: the pipeline between teacher labels and the loss is sound.

- a small student memorises one fixed batch of REAL teacher labels (the seeded random-projection EnCodec teacher
  run on fixture audio) through ``Trainer.train_step``: labels, mask, heads and loss agree;
- ``Trainer.validate`` and the training path (dropout, layerdrop and mixture disabled) give identical metrics on
  the same crops: eval mode, the no-grad conv path, mask and generator seeding, crops and labels all agree;
- the labels a training batch carries are the teacher's codes of that very audio, frame for frame;
- a click at a known sample changes the teacher's codes at the student frame whose window holds it.
"""

import dataclasses

import numpy as np
import pytest
import torch

from mert.data.shards import Corpus
from mert.teachers.base import HOP, WINDOW
from mert.train.distributed import DistInfo
from mert.train.labels import TeacherLabels
from mert.train.trainer import Trainer
from tests.train.conftest import tiny_profile

NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)


@pytest.fixture(scope="session")
def rvq_teacher():
    from mert.teachers.rvq import build_debug_rvq_extractor

    return build_debug_rvq_extractor()


@pytest.fixture(scope="session")
def rvq_labels(rvq_teacher, corpus_dir):
    """The random-projection EnCodec teacher's codes of every fixture clip (8 x 1024, in memory)."""
    return TeacherLabels(rvq_teacher, Corpus(corpus_dir))


@pytest.fixture(scope="session")
def kmeans_teacher(corpus_dir):
    from mert.teachers.kmeans import KMeansTeacher, fit_kmeans

    settings = dict(features=["mfcc"], n_clusters=[16], n_mels=64, n_mfcc=13, sample_rate=24_000, seed=0)
    return KMeansTeacher(fit_kmeans(Corpus(corpus_dir), settings, fit_frames=4000))


def test_small_student_memorises_one_batch_of_real_teacher_labels(corpus_dir, rvq_labels, tmp_path):
    prof = tiny_profile(
        crop_samples=24_000,
        micro_batch_clips=2,
        batch_seconds=2.0,
        lr=2e-3,
        warmup_steps=10,
        max_steps=100_000,  # the linear decay stays ~flat over the test
        model_overrides=NO_DROPOUT,
        objective_overrides={"mixture_prob": 0.0},
    )
    t = Trainer(prof, Corpus(corpus_dir), rvq_labels, tmp_path, DistInfo()).setup()
    batch = t.loader.step_batches(0)  # one fixed batch; its (step, slot) seed fixes the mask too
    K = t.objective.n_codebooks
    first = t.train_step(batch)
    majority = [first[f"majority_{k}"].item() for k in range(K)]
    for _ in range(300):
        m = t.train_step(batch)
        acc = [m[f"acc/rvq_{k}"].item() for k in range(K)]
        if min(acc) >= 0.9:
            break
    assert min(acc) >= 0.9, f"accuracy {acc} after 300 steps on one batch (majority rates {majority})"


def disable_regularisers(t: Trainer) -> None:
    """Dropout, attention dropout, layerdrop and the mixture off, without leaving training mode."""
    m = t.raw_model
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    for layer in m.mert.encoder.layers:
        layer.attention.dropout = 0.0
    m.mert.encoder.layerdrop = 0.0
    m.config = dataclasses.replace(m.config, mixture_prob=0.0)


def test_validate_equals_the_training_path_on_the_same_crops(corpus_dir, rvq_labels, tmp_path):
    prof = tiny_profile(crop_samples=24_000, val_batches=2)  # dropout, layerdrop and mixture on (the reference's)
    t = Trainer(prof, Corpus(corpus_dir), rvq_labels, tmp_path, DistInfo()).setup()
    for step in range(3):
        t.train_step(t.loader.step_batches(step))
    val = t.validate()
    assert not t.raw_model.training
    disable_regularisers(t)
    t.model.train()
    sums: dict[str, float] = {}
    for step in range(prof.val_batches):
        for batch in t.val_loader.step_batches(step):
            out = t._forward(batch)  # grad enabled: the full-clip conv path, not the streaming one
            for k, v in t._metrics(batch, out).items():
                sums[k] = sums.get(k, 0.0) + v.item() / prof.val_batches
    assert sums["mix_frac"] == 0.0
    for k, v in sums.items():
        assert val[f"val/{k}"] == pytest.approx(v, rel=1e-4, abs=1e-5), k


@pytest.mark.parametrize("teacher_name", ["rvq_teacher", "kmeans_teacher"])
def test_batch_labels_are_the_teachers_codes_of_the_batch_audio(corpus_dir, teacher_name, request, tmp_path):
    """Cropping keeps labels on their frames: the teacher run on the cropped audio gives the batch's labels (away
    from the crop edges, where the crop lacks the context the whole clip had); one frame of shift would not."""
    teacher = request.getfixturevalue(teacher_name)
    corpus = Corpus(corpus_dir)
    prof = tiny_profile(crop_samples=96_000, micro_batch_clips=2, batch_seconds=8.0)
    t = Trainer(prof, corpus, TeacherLabels(teacher, corpus), tmp_path, DistInfo()).setup()
    batch = t.loader.step_batches(1)[0]
    with torch.no_grad():
        lengths = torch.full((batch.wav.shape[0],), batch.wav.shape[1])
        direct = teacher.encode(batch.wav, lengths)[..., : batch.labels.shape[-1]]  # (B, K, T)
    inner = slice(100, -10)  # EnCodec's causal context settles within ~1 s; k-means reads 4 frames each side

    def agreement(shift: int) -> float:
        return (torch.roll(direct, shift, -1)[..., inner] == batch.labels[..., inner]).float().mean().item()

    assert agreement(0) == 1.0
    assert max(agreement(-1), agreement(1)) < 0.95  # = the share of frames whose code equals a neighbour's


def covering_frames(n: int) -> list[int]:
    """Student frames whose window ``[320 i, 320 i + 400)`` contains sample ``n``."""
    return [i for i in range(max(0, (n - WINDOW) // HOP), n // HOP + 1) if HOP * i <= n < HOP * i + WINDOW]


def changed_frames(teacher, base: np.ndarray, n: int) -> list[int]:
    clicked = base.copy()
    clicked[n : n + 4] += 0.8
    wav = torch.from_numpy(np.stack([base, clicked]))
    with torch.no_grad():
        codes = teacher.encode(wav, torch.full((2,), wav.shape[1]))  # (2, K, F)
    return (codes[0] != codes[1]).any(0).nonzero().flatten().tolist()


@pytest.mark.parametrize("n", [HOP * 40 + 200, HOP * 57 + 30, HOP * 90 + 319])
def test_click_changes_the_teachers_codes_at_the_student_frame_that_holds_it(n, rvq_teacher, kmeans_teacher):
    from mert.teachers.rvq import calibration_signal

    base = 0.05 * calibration_signal(seconds=2.0, seed=3)
    cover = covering_frames(n)
    assert cover[-1] == n // HOP and len(cover) in (1, 2)
    # EnCodec is causal: codec frame i reads samples up to 320 (i + 1), so the first frame a click can change is
    # the last student frame holding it; later frames change too (its receptive field reaches forward in time).
    rvq = changed_frames(rvq_teacher, base, n)
    assert rvq and rvq[0] == n // HOP, (n, rvq[:5])
    # k-means on MFCC + deltas + delta-deltas: frame i is the Hann window [320 i, 320 i + 400), deltas read 4
    # frames each side, so a click moves codes only within 4 frames of the frames holding it.
    km = changed_frames(kmeans_teacher, base, n)
    assert km and cover[0] - 4 <= min(km) and max(km) <= cover[-1] + 4, (n, cover, km)
