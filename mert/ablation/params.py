"""``params.yaml`` section ``ablation``: the teacher x CQT grid, its baselines and where everything goes.

Cheap to import (no torch): the names below repeat ``mert.model.pretraining.TEACHERS`` and
``mert.probe.models.HANDCRAFTED``; a test checks they agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mert.params import ParamsError, section

TEACHERS = ("rvq", "kmeans", "bestrq", "melrvq", "hidden")
"""``mert label --teacher`` values (= ``mert.model.pretraining.TEACHERS``). ``hidden`` clusters the hidden state of
the model ``label.hidden.model`` names (which must be set; that model is not a DVC dependency of the grid)."""
CQT_VARIANTS = ("with", "without", "log")
"""``with``: the profile's objective (the reference: CQT MSE, weight 1, linear magnitude); ``without``: CQT loss
weight 0, everything else as the profile; ``log``: the CQT target on the log scale (``cqt_scale: log``, a
documented deviation, :func:`mert.model.pretraining.cqt_scaled`)."""
BASELINES = ("mfcc", "chroma", "cqt")
"""The handcrafted baselines of ``mert probe`` (= ``mert.probe.models.HANDCRAFTED``). The random-init floor is
always part of the grid (every verdict is against it)."""
_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


def _unique(name: str, values: list[str], allowed: tuple[str, ...] | None = None) -> None:
    if not values:
        raise ValueError(f"{name} must not be empty")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has duplicates: {values}")
    bad = [v for v in values if (allowed is not None and v not in allowed) or not _NAME.match(v)]
    if bad:
        what = f"one of {list(allowed)}" if allowed else "a plain name (letters, digits, '_', '.')"
        raise ValueError(f"{name}: {bad} must each be {what}")


@section("ablation")
@dataclass
class AblationParams:
    """The teacher ablation (``ablation/dvc.yaml``, ``mert ablation ...``).

    Cells are ``teachers x cqt``; each cell is labelled once per teacher (shared by its CQT variants), pretrained
    with ``profile`` for ``max_steps`` into ``{dir}/pretrain/<teacher>-<cqt>/``, and probed on every task of
    ``tasks_dir`` into ``{dir}/probe/<cell>/<task>/``. The random init of the cells' exact architecture (the floor
    of every verdict) and the handcrafted baselines are probed into ``{dir}/probe/{random,<baseline>}/<task>/``.
    """

    profile: str = "mert-tiny"
    """``pretrain.profiles`` entry every cell trains (its objective is the ``with`` variant)."""
    max_steps: int | None = None
    """Optimiser steps per cell (null: the profile's ``max_steps``)."""
    teachers: list[str] = field(default_factory=lambda: ["rvq", "melrvq", "bestrq", "kmeans"])
    """Label teachers (``mert label --teacher``; their settings: ``label.<teacher>``)."""
    cqt: list[str] = field(default_factory=lambda: ["with", "without"])
    """CQT variants, each of :data:`CQT_VARIANTS`."""
    tasks: list[str] = field(default_factory=lambda: ["key", "instrument", "pitch", "tempo"])
    """Probing tasks: sub-directories of ``tasks_dir``."""
    tasks_dir: str = "data/demo/tasks"
    """Where the probing tasks live (the demo corpus's real-material tasks)."""
    baselines: list[str] = field(default_factory=lambda: ["mfcc", "chroma"])
    """Handcrafted baselines probed beside the cells and the random init, each of :data:`BASELINES`."""
    dir: str = "data/ablation"
    """Root of the ablation's labels, runs and probe results."""
    report: str = "docs/results/ablation"
    """Report path stem: ``.md`` (tables), ``.json`` (everything) and ``.png`` (scores with CIs)."""
    experiment: str = "mert-ablation"
    """MLflow experiment of the report's runs (one per cell and baseline); the cells' pretraining runs go to
    ``<experiment>-pretrain``."""
    tracking_uri: str | None = None
    """MLflow tracking URI (null: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory)."""
    n_boot: int = 1000
    """Paired-bootstrap resamples of each verdict against the random init."""
    seed: int = 0
    """Seed of the paired bootstrap."""

    def __post_init__(self) -> None:
        _unique("teachers", self.teachers, TEACHERS)
        _unique("cqt", self.cqt, CQT_VARIANTS)
        _unique("tasks", self.tasks)
        _unique("baselines", self.baselines, BASELINES)
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")
        if not self.dir or not self.report or not self.tasks_dir:
            raise ValueError("dir, report and tasks_dir must be non-empty paths")

    def profile_of(self, pretrain):
        """The ``pretrain.profiles[profile]`` entry, with ``max_steps`` applied.

        Args:
            pretrain: the loaded ``pretrain`` section (:class:`mert.train.params.PretrainParams`).

        Raises:
            ParamsError: ``profile`` is not a profile of the ``pretrain`` section.
        """
        import dataclasses

        if self.profile not in pretrain.profiles:
            raise ParamsError(
                f"ablation.profile {self.profile!r} is not in pretrain.profiles ({sorted(pretrain.profiles)})"
            )
        prof = pretrain.profiles[self.profile]
        return dataclasses.replace(prof, max_steps=self.max_steps or prof.max_steps)
