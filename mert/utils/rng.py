"""Seeded constructions on torch's global CPU RNG that stay deterministic when other threads build at the same time."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU RNG seeded with ``seed``, then restore it; one block at a time.

    The global RNG is shared by every thread of a process. Two seeded constructions in two threads at once (the
    Prefect flow's label-shard tasks each building the random-projection teacher; two probes each building a
    random-init twin) interleave their draws, so each builds something else, and the "same" teacher gets two identities
    (seen: ``2 label stores match`` after a 2-shard labelling). Inside these blocks a process-wide lock makes each
    construction see only its own draws. (Draws made outside such blocks are not serialised: code that draws while
    others build uses its own ``torch.Generator``.)
    """
    with _LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Hold the lock of :func:`seeded` without seeding: for a construction whose random init is overwritten.

    Loading a trained encoder initialises its parameters (drawing from the global RNG) before the checkpoint replaces
    them. Those draws are unseeded and harmless to the loaded model, but made while another thread is inside a
    :func:`seeded` block they shift that block's draws: the demo's random-init twin for tempo came out another network
    when the trained model's tempo probe loaded its weights beside it (the twin's beat F1 0.431 in one fresh clone,
    0.427 in the next). Inside this block they wait for the seeded construction instead.
    """
    with _LOCK:
        yield
