"""Fixtures for the trainer tests: a tiny corpus (the session's demo corpus), fake labels, tiny profiles."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from mert.train.identity import code_identity as _real_code_identity
from mert.train.params import PROFILES, Profile

# A profile small enough for CPU tests: 0.4 s crops, 2 clips, dropout/layerdrop on, short mixture segments.
TINY = dataclasses.replace(
    PROFILES["mert-tiny"],
    crop_samples=9600,
    min_clip_samples=24000,
    micro_batch_clips=2,
    batch_seconds=0.8,
    warmup_steps=2,
    max_steps=6,
    save_interval=2,
    keep_last=2,
    log_interval=1,
    val_interval=0,
    val_batches=1,
    loader_prefetch=0,
    objective_overrides={"mixture_len_range": [1600, 3200]},
)


def tiny_profile(**overrides) -> Profile:
    return dataclasses.replace(TINY, **overrides)


@functools.lru_cache(maxsize=1)
def _session_code_identity() -> dict:
    return _real_code_identity()


@pytest.fixture(autouse=True)
def _stable_code_identity(monkeypatch):
    """The training code's identity as it was when the session first read it.

    A run's code is part of its identity (:mod:`mert.train.identity`); in a working tree that others edit while the
    suite runs, a test that trains and then re-enters its run would otherwise see "code changed" at random. The tests
    of that check patch ``code_identity`` themselves; subprocess tests read the real tree.
    """
    from mert.train import identity

    monkeypatch.setattr(identity, "code_identity", lambda root=None: _session_code_identity())
