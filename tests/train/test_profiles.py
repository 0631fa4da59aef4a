"""The 95M and 330M profiles run real optimiser steps (reference models and objectives) on tiny CPU inputs."""

import dataclasses

import pytest
import torch

from mert.data.shards import Corpus
from mert.train.distributed import DistInfo
from mert.train.labels import HashLabels
from mert.train.params import PROFILES
from mert.train.trainer import Trainer


def one_step(name, corpus_dir, tmp_path):
    prof = dataclasses.replace(
        PROFILES[name],
        crop_samples=9600,
        min_clip_samples=24000,
        micro_batch_clips=2,
        batch_seconds=0.8,
        loader_prefetch=0,
        objective_overrides={**PROFILES[name].objective_overrides, "mixture_len_range": [1600, 3200]},
    )
    t = Trainer(prof, Corpus(corpus_dir), HashLabels(8, 1024), tmp_path, DistInfo()).setup()
    assert t.dtype == torch.float32 and t.accum == 1  # CPU: fp32
    before = t.raw_model.mert.encoder.layers[0].attention.q_proj.weight.clone()
    m = t.train_step(t.loader.step_batches(0))
    assert torch.isfinite(m["loss/total"]) and m["optim/skipped"] == 0
    assert t.scheduler.get_last_lr()[0] == pytest.approx(2 * prof.lr / prof.warmup_steps)  # the 2nd update's LR
    assert not torch.equal(before, t.raw_model.mert.encoder.layers[0].attention.q_proj.weight)
    return t


@pytest.mark.slow  # ~1-2 min on 2 loaded cores
def test_95m_profile_steps(corpus_dir, tmp_path):
    t = one_step("mert-95m", corpus_dir, tmp_path)
    assert t.encoder_config.hidden_size == 768 and not t.encoder_config.do_stable_layer_norm
    assert t.objective.final_dim == 64


@pytest.mark.slow  # 330M parameters with Adam state on CPU
def test_330m_profile_steps(corpus_dir, tmp_path):
    t = one_step("mert-330m", corpus_dir, tmp_path)
    assert t.encoder_config.hidden_size == 1024 and t.encoder_config.do_stable_layer_norm
    assert t.objective.final_dim == 128 and t.p.clip_norm == 1.0


def test_small_profile_steps(corpus_dir, tmp_path):
    t = one_step("mert-small", corpus_dir, tmp_path)
    enc = t.encoder_config
    assert (enc.hidden_size, enc.num_hidden_layers, enc.do_stable_layer_norm) == (64, 4, True)
    assert enc.hidden_dropout == enc.layerdrop == 0.0 and enc.feature_grad_mult == 1.0
    assert t.objective.final_dim == 64 and t.objective.mixture_prob == 0.0
    assert t.p.val_holdout_clips == 4 and not {c.id for c in t.val_loader.sampler.clips} & {
        c.id for c in t.loader.sampler.clips
    }


@pytest.mark.slow  # ~3 min on 2 loaded cores
def test_small_profile_gets_past_the_unigram_on_kmeans_labels(corpus_dir, tmp_path):
    """The learning claim behind mert-small: on a learnable teacher (MFCC k-means fitted on the fixture audio) its
    validation CE on held-out clips drops clearly below the unigram floor within 200 steps, with no collapse
    warning."""
    from mert.teachers.kmeans import KMeansTeacher, fit_kmeans
    from mert.train.labels import TeacherLabels

    corpus = Corpus(corpus_dir)
    settings = dict(features=["mfcc"], n_clusters=[32], n_mels=64, n_mfcc=13, sample_rate=24_000, seed=0)
    labels = TeacherLabels(KMeansTeacher(fit_kmeans(corpus, settings, fit_frames=20_000)), corpus)
    prof = dataclasses.replace(PROFILES["mert-small"], max_steps=200, warmup_steps=20, val_holdout_clips=2)
    prof = dataclasses.replace(prof, val_interval=50, save_interval=200, loader_prefetch=0)
    res = Trainer(prof, corpus, labels, tmp_path, DistInfo()).setup().fit()
    val = res["val"]
    gain = val["val/unigram_ce_0"] - val["val/loss/kmeans_ce_0"]
    assert gain > 0.1, val
    assert val["val/collapsed"] == 0.0
