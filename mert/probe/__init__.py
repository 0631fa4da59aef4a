"""Downstream probing (MARBLE constrained track): frozen features, per-layer probes, reports.

``probe(model_spec, task, out, params)`` in :mod:`mert.probe.api` is the entry point; ``mert probe`` the CLI.
Every result carries its evidence (95% bootstrap CI over test clips, n test, majority rate) and the per-clip
record that :mod:`mert.probe.evidence` compares results on (``mert probe-compare``, the flow's verdict lines).
Nothing here imports MLflow: registry URIs and run logging go through ``mert.tracking`` when it exists.
"""

from mert.probe.api import probe, resolve_task
from mert.probe.tasks import KINDS, Example, Task, TaskError, load_task

__all__ = ["KINDS", "Example", "Task", "TaskError", "load_task", "probe", "resolve_task"]
