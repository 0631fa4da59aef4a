"""The ablation's stages (label per teacher, pretrain per cell, probe per row and task), each timed.

Each is one call into :mod:`mert.stages` with the parameters the ``ablation`` section selects, and writes its wall
time next to its output (:data:`~mert.ablation.plan.STAGE_FILE`, :data:`~mert.ablation.plan.CELL_FILE`), which is
where the report's wall time comes from.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mert.ablation.params import AblationParams
from mert.ablation.plan import CELL_FILE, STAGE_FILE, Layout, cell_objective, cell_of, model_spec
from mert.params import load_section

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextmanager
def timed(path: Path, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Time the block; on success write ``record`` + ``started``/``finished`` (UTC ISO) + ``wall_s`` to ``path``."""
    from mert.utils.io import atomic_write_json

    info = {**record, "started": _now()}
    t0 = time.perf_counter()
    yield info
    info.update(finished=_now(), wall_s=round(time.perf_counter() - t0, 3))
    atomic_write_json(path, info)


def label(params_file: str | Path, teacher: str, progress: bool = False) -> dict[str, Any]:
    """Label the corpus with ``teacher`` (its ``label.<teacher>`` settings) into ``{dir}/labels/<teacher>/``.

    Returns:
        The label summary (``mert label --json``), also written to ``label.json`` in the store root.
    """
    from mert.stages import label as label_stage
    from mert.utils.io import atomic_write_json

    ab = load_section("ablation", params_file)
    if teacher not in ab.teachers:
        raise ValueError(f"teacher {teacher!r} is not in ablation.teachers {ab.teachers}")
    params = load_section("label", params_file, {"teacher": teacher})
    corpus = load_section("corpus", params_file).dir
    out = Layout(ab).labels(teacher)
    with timed(out / STAGE_FILE, {"stage": "label", "teacher": teacher}):
        summary = label_stage(corpus, out, params, progress=progress).as_dict()
        atomic_write_json(out / "label.json", summary)
    return summary


def pretrain_params(ab: AblationParams, pretrain, teacher: str, cqt: str):
    """The ``pretrain`` section a cell trains with: the ablation's profile, its steps and the cell's objective.

    Nothing is registered in the model registry (a cell must never become the ``candidate``), and the MLflow run
    goes to the experiment ``<ablation.experiment>-pretrain``.

    Returns:
        ``(params, objective_overrides)``.
    """
    prof = ab.profile_of(pretrain)
    over = cell_objective(prof, teacher, cqt)
    prof = dataclasses.replace(prof, objective_overrides=over)
    params = dataclasses.replace(
        pretrain,
        profile=ab.profile,
        profiles={**pretrain.profiles, ab.profile: prof},
        register=False,
        experiment=f"{ab.experiment}-pretrain",
    )
    return params, over


def pretrain(params_file: str | Path, cell_name: str, device: str | None = None) -> dict[str, Any]:
    """Pretrain one cell into ``{dir}/pretrain/<cell>/`` and write its :data:`CELL_FILE`.

    Returns:
        The pretraining result (``result.json``).
    """
    from mert.model.pretraining import teacher_kind
    from mert.stages import pretrain as pretrain_stage
    from mert.teachers.labels import LabelStore

    ab = load_section("ablation", params_file)
    cell = cell_of(ab, cell_name)
    lay = Layout(ab)
    corpus = load_section("corpus", params_file).dir
    labels_dir = lay.labels(cell.teacher)
    ident = LabelStore.open(labels_dir).identity
    teacher = teacher_kind(str(ident.get("name", cell.teacher)))  # the metric name the trainer will use
    params, over = pretrain_params(ab, load_section("pretrain", params_file), teacher, cell.cqt)
    out = lay.run(cell)
    steps = params.resolve().max_steps
    log.info("cell %s: profile %s, %d steps, objective overrides %s", cell.name, ab.profile, steps, over)
    record = {"stage": "pretrain", "cell": cell.name, "teacher": cell.teacher, "cqt": cell.cqt,
              "profile": ab.profile, "max_steps": steps, "objective_overrides": over,
              "teacher_identity": {k: ident.get(k) for k in ("name", "hash")}}  # fmt: skip
    with timed(out / CELL_FILE, record) as info:
        res = pretrain_stage(corpus, labels_dir, out, params, device=device, on_change="fresh")  # as the pipelines
        info["run_id"] = res.get("run_id")
    return res


def probe(params_file: str | Path, model: str, task: str) -> dict[str, Any]:
    """Probe a row (a cell's export or a baseline) on ``task`` into ``{dir}/probe/<model>/<task>/results.json``.

    Returns:
        The probe report (``results.json``).
    """
    from mert.stages import probe as probe_stage

    ab = load_section("ablation", params_file)
    if task not in ab.tasks:
        raise ValueError(f"task {task!r} is not in ablation.tasks {ab.tasks}")
    spec = model_spec(ab, model)
    lay = Layout(ab)
    out = lay.probe(model, task)
    with timed(out.parent / STAGE_FILE, {"stage": "probe", "model": model, "spec": spec, "task": task}):
        report = probe_stage(spec, lay.task(task), out, load_section("probe", params_file))
    return report
