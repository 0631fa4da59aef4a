"""The ablation grid: cells, the objective of each CQT variant, model specs and the on-disk layout.

``ablation/dvc.yaml`` spells the same paths (its stages' ``outs``); the end-to-end test checks they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mert.ablation.params import AblationParams

CELL_FILE = "ablation_cell.json"
"""Written by ``mert ablation pretrain`` into the cell's run directory: the cell, its objective, its wall time."""
STAGE_FILE = "ablation_stage.json"
"""Written by ``mert ablation label`` / ``probe`` into their output directory: the command's wall time."""
RANDOM = "random"
"""The row (and probe directory) of the random-init floor."""


@dataclass(frozen=True)
class Cell:
    """One (teacher, CQT variant) cell of the grid."""

    teacher: str
    cqt: str

    @property
    def name(self) -> str:
        """``<teacher>-<cqt>``: the run directory, probe directory and MLflow run name."""
        return f"{self.teacher}-{self.cqt}"


def cells(params: AblationParams) -> list[Cell]:
    """Every cell, teachers outer, CQT variants inner (the order of the report's rows)."""
    return [Cell(t, c) for t in params.teachers for c in params.cqt]


def cell_of(params: AblationParams, name: str) -> Cell:
    """The cell called ``name``; ValueError naming the known cells otherwise."""
    for cell in cells(params):
        if cell.name == name:
            return cell
    raise ValueError(f"{name!r} is not a cell of the ablation grid ({[c.name for c in cells(params)]})")


def cell_objective(profile, teacher: str, cqt: str) -> dict[str, Any]:
    """``objective_overrides`` of a cell: the profile's, changed as the CQT variant says.

    ``without`` sets the CQT loss weight to 0 and keeps every other weight of the objective the student would get
    (``PretrainingConfig.for_labels``: the label CE weight under the teacher's name, the feature penalty), because
    a ``loss_weights`` override replaces the whole dict. The CQT is still computed and logged (``loss/cqt_mse``)
    but its head gets no gradient.

    Args:
        profile: the :class:`mert.train.params.Profile` the cell trains.
        teacher: the metric-name teacher of the label store (``rvq``, ``kmeans``, ``bestrq``, ``melrvq``).
        cqt: a CQT variant (``with``, ``without``, ``log``).

    Returns:
        The overrides (a new dict; the profile is not modified).
    """
    from mert.model.pretraining import PretrainingConfig

    over = dict(profile.objective_overrides)
    if cqt == "with":
        return over
    if cqt == "log":
        return {**over, "cqt_scale": "log"}
    if cqt == "without":
        weights = PretrainingConfig.for_labels(profile.model, teacher, 1, 2, **over).loss_weights
        return {**over, "loss_weights": {**weights, "loss/cqt_mse": 0.0}}
    raise ValueError(f"unknown CQT variant {cqt!r}")


class Layout:
    """Where the ablation's stages read and write (all under ``params.dir``, the report at ``params.report``)."""

    def __init__(self, params: AblationParams):
        self.params = params
        self.root = Path(params.dir)

    def labels(self, teacher: str) -> Path:
        return self.root / "labels" / teacher

    def run(self, cell: Cell | str) -> Path:
        return self.root / "pretrain" / (cell if isinstance(cell, str) else cell.name)

    def probe(self, model: str, task: str) -> Path:
        """``results.json`` of ``model`` (a cell name or a baseline) on ``task``."""
        return self.root / "probe" / model / task / "results.json"

    def task(self, task: str) -> Path:
        return Path(self.params.tasks_dir) / task

    def report(self, suffix: str) -> Path:
        return Path(f"{self.params.report}{suffix}")


def model_spec(params: AblationParams, model: str) -> str:
    """The ``mert probe --model`` spec of a row: a cell's export, the random init, or a handcrafted name.

    The random init is ``random:<export dir of the first cell>``: a seeded random encoder with the exact architecture
    (and input normalisation) the cells were trained with, profile ``model_overrides`` included (every cell shares
    it); only the export's ``config.json`` is read, never its weights.

    Args:
        params: the ablation section.
        model: a cell name (``rvq-with``), ``random``, or a handcrafted baseline (``mfcc``, ...).
    """
    if model == RANDOM:
        return f"random:{Layout(params).run(cells(params)[0]) / 'export'}"
    if model in params.baselines:
        return model
    return str(Layout(params).run(cell_of(params, model)) / "export")


def rows(params: AblationParams) -> list[tuple[str, str]]:
    """``(name, kind)`` of every report row: cells (``cell``), then ``random-init``, then ``handcrafted``."""
    out = [(c.name, "cell") for c in cells(params)] + [(RANDOM, "random-init")]
    return out + [(b, "handcrafted") for b in params.baselines]
