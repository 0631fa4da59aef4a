"""Seeded teachers built in threads at once are the same teacher (the flow's label-shard tasks run in threads)."""

from concurrent.futures import ThreadPoolExecutor

import torch

from mert.probe.models import random_model
from mert.teachers.rvq import _bare_model


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_random_projection_teacher_built_in_two_threads_at_once_is_one_teacher():
    """Before the global RNG was locked for seeded constructions, a 2-shard labelling in the flow wrote two label
    stores (two teacher identities) and pretraining refused them: `2 label stores match`."""
    reference = _bare_model(0).state_dict()
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: _bare_model(0).state_dict(), range(4)))
    assert all(_same(reference, b) for b in built)


def test_random_init_twins_built_in_threads_at_once_are_equal():
    reference = random_model("mert-tiny").model.state_dict()
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: random_model("mert-tiny").model.state_dict(), range(4)))
    assert all(_same(reference, b) for b in built)
