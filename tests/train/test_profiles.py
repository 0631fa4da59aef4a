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
        objective_overrides={"mixture_len_range": [1600, 3200]},
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
