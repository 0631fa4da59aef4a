"""Downstream probing (MARBLE constrained track): frozen features, per-layer probes, reports.

``probe(model_spec, task, out, params)`` in :mod:`mert.probe.api` is the entry point; ``mert probe`` the CLI.
Every result carries its evidence (95% bootstrap CI over test clips, n test, majority rate) and the per-clip
record that :mod:`mert.probe.evidence` compares results on (``mert probe-compare``, the flow's verdict lines).
Nothing here imports MLflow: registry URIs and run logging go through ``mert.tracking`` when it exists.

Exports are lazy so that the CLI (``mert.probe.commands``) and the light submodules (``evidence``, ``metrics``) import
without torch.
"""

import importlib

_EXPORTS = {
    "probe": "mert.probe.api",
    "resolve_task": "mert.probe.api",
    "KINDS": "mert.probe.tasks",
    "Example": "mert.probe.tasks",
    "Task": "mert.probe.tasks",
    "TaskError": "mert.probe.tasks",
    "load_task": "mert.probe.tasks",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mert.probe' has no attribute {name!r}")
