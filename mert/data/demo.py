"""``mert demo-corpus``: the built-in demo corpus, rendered from real scores (default) or synthesised.

* ``source: scores`` (:mod:`mert.data.rendered`): real compositions from the music21 corpus (J. S. Bach excluded),
  rendered with a General MIDI SoundFont, plus real-material probing tasks (key, instrument family, pitch class,
  tempo/beats) with hundreds of clips each.
* ``source: synthetic`` (:mod:`mert.data.synth`): generated tones and drums, for fast unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mert.params import section


@section("demo")
@dataclass
class DemoParams:
    """Parameters of ``mert demo-corpus`` (``params.yaml`` section ``demo``)."""

    seed: int = 0
    source: Literal["scores", "synthetic"] = "scores"
    """``scores``: real compositions rendered with a SoundFont; ``synthetic``: generated tones (tests)."""
    n_clips: int = 48
    """Clips in the pretraining corpus (``raw/``)."""
    min_seconds: float = 5.0
    max_seconds: float = 30.0
    task_clips: int = 96
    """Clips per probing task (all splits)."""
    task_seconds: float = 4.0
    """Clip length of the synthetic tasks (the rendered tasks have per-task lengths, see ``mert.data.rendered``)."""
    valid_fraction: float = 0.15
    """Share of each rendered task's clips in ``valid`` (pieces never cross splits)."""
    test_fraction: float = 0.35
    """Share of each rendered task's clips in ``test``."""
    bad_files: bool = True
    """Also write a few broken files into ``raw/`` (empty, truncated, not audio) to show quarantine."""
    workers: int = 0
    """Processes for parsing and rendering (0 = one per usable core, at most 8). Does not change the output."""

    def __post_init__(self):
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError("need 0 < min_seconds <= max_seconds")
        if self.n_clips < 1 or self.task_clips < 12:
            raise ValueError("n_clips must be >= 1 and task_clips >= 12 (so every split has examples)")
        fractions = (self.valid_fraction, self.test_fraction)
        if not (all(0 < f < 1 for f in fractions) and sum(fractions) < 1):
            raise ValueError("valid_fraction and test_fraction must be in (0, 1) and sum to less than 1")
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        n = self.task_clips
        train = n - round(n * self.test_fraction) - round(n * self.valid_fraction)
        if self.source == "scores" and train < 12:
            raise ValueError(f"task_clips {n} leaves {train} train clips per task; the rendered tasks need >= 12 "
                             "(every pitch class and instrument family in train)")  # fmt: skip


def generate(out: str | Path, params: DemoParams | None = None) -> Path:
    """Write the demo corpus to ``out`` (``raw/``, ``tasks/``); the same params always give the same bytes."""
    p = params or DemoParams()
    if p.source == "synthetic":
        from mert.data.synth import generate as synthesise

        return synthesise(out, p)
    from mert.data.rendered import generate as render_scores

    return render_scores(out, p)
