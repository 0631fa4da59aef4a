"""``probe(model_spec, task, out, params) -> dict``: the library entry point behind ``mert probe``.

Order of work: resolve and validate the task (every layout/label error before any audio is decoded), resolve
the model, extract (or load cached) features, sweep layers x LRs, attach the evidence (bootstrap CI over test
clips, the number of test clips, the majority rate; :mod:`mert.probe.evidence`), write ``results.json`` + plot +
DVC metrics.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from mert.probe.params import ProbeParams
from mert.probe.tasks import SPLITS, Task, TaskError, load_task

log = logging.getLogger(__name__)


def resolve_task(spec: str | Path, kind: str | None = None, params: ProbeParams | None = None) -> Task:
    """A task from a directory (generic layouts) or ``<adapter>[:<dataset root>]`` (a MARBLE adapter).

    Args:
        spec: a directory, ``gtzan-genre:/data/GTZAN``, or ``gtzan-genre`` (root from ``params.datasets``).
        kind: force the task kind of a generic directory.
        params: probe params (dataset roots).
    """
    from mert.probe.adapters import ADAPTERS

    text = str(spec)
    name, _, root = text.partition(":")
    if name in ADAPTERS:
        root = root or (params.datasets.get(name) if params else None)
        if not root:
            raise TaskError(f"adapter {name!r} needs a dataset root: '{name}:/path' or probe.datasets.{name}")
        return ADAPTERS[name](Path(root))
    return load_task(text, kind)


def _n_clips(task: Task, skipped: dict[str, str]) -> dict[str, int]:
    return {s: sum(1 for e in task.split(s) if str(e.path) not in skipped) for s in SPLITS}


def _reference(task: Task, splits: dict, params: ProbeParams) -> dict[str, Any]:
    """The majority rate of a clip/frame task from its split targets (:func:`mert.probe.evidence.reference_rate`)."""
    from mert.probe.beats import FPS
    from mert.probe.evidence import reference_rate

    test = splits["test"]
    seconds = (np.diff(test.offsets) / FPS).tolist() if task.kind == "beats" else None
    return reference_rate(task.kind, splits["train"].truth, test.truth, task.classes, test_seconds=seconds,
                          tolerance=params.beat_tolerance)  # fmt: skip


def _compute(task: Task, model, params: ProbeParams):
    """Features and the probe sweep of ``task``: ``(result, features, time the sweep started)``."""
    from mert.probe.features import extract

    if task.kind == "separation":
        from mert.probe.separation import separation_sweep

        result, feats = separation_sweep(task, model, params)
        return result, feats, time.perf_counter()
    from mert.probe.sweep import build_splits, sweep

    mode = "frame" if task.kind == "beats" else "clip"
    window = task.window or params.window_seconds
    feats = extract(model, task.examples, mode, window, params.min_window_seconds, params.extract_batch_size,
                    params.cache_dir or None, params.cache_dtype, params.device)  # fmt: skip
    t1 = time.perf_counter()
    splits, norm = build_splits(task, feats)
    result = sweep(task, splits, norm, params.sweep_config())
    result.extra["reference"] = _reference(task, splits, params)
    return result, feats, t1


def _evidence(task: Task, result, params: ProbeParams) -> dict[str, Any]:
    """CI, n and majority rate of a sweep result, and its per-clip test record keyed by stable clip ids."""
    from mert.probe.evidence import LEVEL, bootstrap_ci, clip_ids, method

    record = dict(result.test_clips)
    record["keys"] = clip_ids(task.examples, record["keys"], task.root)
    low, high = bootstrap_ci(task.kind, record, params.bootstrap, params.seed)
    ref = result.extra.get("reference") or {}
    about = {"ci_level": LEVEL, "n_boot": params.bootstrap, "seed": params.seed, "method": method(record),
             "majority": ref.get("baseline")}  # fmt: skip
    return {"ci_low": low, "ci_high": high, "n_test": len(record["keys"]), "majority_rate": ref.get("rate"),
            "majority_baseline": ref.get("baseline"), "method": about, "test_clips": record}  # fmt: skip


def probe(
    model_spec: str,
    task_dir: str | Path,
    out: str | Path,
    params: ProbeParams | None = None,
    task_type: str | None = None,
    metrics_path: str | Path | None = None,
) -> dict[str, Any]:
    """Probe a frozen model on a task, layer by layer, and write the report files.

    Args:
        model_spec: MODEL spec (see :func:`mert.probe.models.load_model`).
        task_dir: task directory or adapter spec (see :func:`resolve_task`).
        out: path of ``results.json`` (the plot and DVC metrics go beside it).
        params: probe params (defaults: the reference protocol).
        task_type: force the task kind of a generic directory.
        metrics_path: where to write the DVC metrics file (default ``<out stem>.metrics.json``).

    Returns:
        The report dict written to ``results.json``.
    """
    from mert.probe.models import load_model
    from mert.probe.report import write_outputs
    from mert.utils.runtime import intra_op_threads, tune_allocator

    tune_allocator()  # extraction and probe training reuse large buffers: keep them off mmap (mert/utils/runtime.py)
    params = params or ProbeParams()
    task = resolve_task(task_dir, task_type, params)
    log.info("task %s (%s): %s clips per split", task.name, task.kind, task.counts())
    model = load_model(model_spec, params.do_normalize)
    t0 = time.perf_counter()
    with intra_op_threads(params.threads):  # features and probes: the same numbers alone or beside other probes
        result, feats, t1 = _compute(task, model, params)
    t2 = time.perf_counter()
    evidence = _evidence(task, result, params)
    evidence_s = time.perf_counter() - t2
    report = {
        "task": task.name,
        "task_kind": task.kind,
        "task_root": str(task.root) if task.root else None,
        "metric": result.metric,
        "per_layer": result.per_layer,
        "per_layer_test": result.per_layer_test,
        "per_layer_lr": result.per_layer_lr,
        "best_layer": result.best_layer,
        "valid_score": result.valid_metrics[result.metric],
        "test_score": result.test_metrics[result.metric],
        "ci_low": evidence["ci_low"],
        "ci_high": evidence["ci_high"],
        "n_test": evidence["n_test"],
        "majority_rate": evidence["majority_rate"],
        "majority_baseline": evidence["majority_baseline"],
        "test_metrics": result.test_metrics,
        "layer_weights": result.layer_weights,
        "model": model.identity | {"label": model_spec, "hash": model.identity_hash},
        "n_clips": _n_clips(task, feats.skipped),
        "n_clips_task": task.counts(),  # before skipping: a split that lost clips shows against it
        "skipped": feats.skipped,
        "n_skipped": len(feats.skipped),
        "timing": {
            "extract_s": round(feats.seconds, 3),
            "features_cached": feats.cached,
            "total_s": round(time.perf_counter() - t0, 3),
        },  # fmt: skip
        "params": {k: v for k, v in vars(params).items() if k != "datasets"},
        "evidence": evidence["method"],
        "test_clips": evidence["test_clips"],
    }
    if task.kind != "separation":
        report["timing"]["sweep_s"] = round(t2 - t1, 3)
    report["timing"]["evidence_s"] = round(evidence_s, 3)
    write_outputs(report, out, metrics_path)
    if feats.skipped:
        log.warning("%d file(s) skipped (undecodable, silent or too short): %s", len(feats.skipped),
                    sorted(feats.skipped.items())[:5])  # fmt: skip
    return report
