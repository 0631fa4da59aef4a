"""Probe outputs: ``results.json``, the per-layer plot (PNG) and a flat DVC metrics file.

``results.json`` keys: ``task``, ``task_kind``, ``metric``, ``per_layer`` (layer -> validation score),
``per_layer_test``, ``per_layer_lr``, ``best_layer``, ``test_score``, ``valid_score``, ``test_metrics``
(every metric of the task on test), ``layer_weights`` (softmax weights of the weighted-sum probe),
``model`` (identity), ``n_clips`` per split, ``skipped`` (path -> reason), ``timing``, and the evidence
(:mod:`mert.probe.evidence`): ``ci_low``/``ci_high`` (95% bootstrap CI of ``test_score`` over test clips),
``n_test`` (test clips scored), ``majority_rate`` + ``majority_baseline`` (the score of a predictor that learned
nothing, and what it is), ``evidence`` (how the CI was computed) and ``test_clips`` (clip ids, relative to the
task root, with per-clip scores or clip-level ``pred``/``truth``: what two results are compared on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mert.utils.io import atomic_write, atomic_write_json


def output_paths(out: str | Path) -> dict[str, Path]:
    """``results.json`` -> itself, ``<stem>.png`` (plot) and ``<stem>.metrics.json`` (DVC metrics)."""
    out = Path(out)
    return {"results": out, "plot": out.with_suffix(".png"), "metrics": out.with_name(out.stem + ".metrics.json")}


EVIDENCE = ("n_test", "ci_low", "ci_high", "majority_rate")


def dvc_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Flat numbers for ``dvc metrics show/diff``: test/valid score, its evidence, best layer, every test metric."""
    flat: dict[str, Any] = {"test_score": report["test_score"], "valid_score": report["valid_score"]}
    flat |= {k: report[k] for k in EVIDENCE if report.get(k) is not None}
    flat["best_layer"] = report["best_layer"]
    flat |= {f"test/{k}": v for k, v in report["test_metrics"].items() if isinstance(v, (int, float))}
    flat |= {f"valid/layer_{k}": v for k, v in report["per_layer"].items()}
    return flat


def plot_layers(report: dict[str, Any], path: str | Path) -> None:
    """Validation (and test) score per layer, best layer marked; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["per_layer"])
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.2))
    ax.plot(xs, [report["per_layer"][n] for n in names], "o-", label="valid")
    ax.plot(xs, [report["per_layer_test"][n] for n in names], "s--", alpha=0.7, label="test")
    best = names.index(report["best_layer"])
    ax.axvline(best, color="grey", lw=0.8, ls=":")
    if report.get("ci_low") is not None:  # a percentile interval need not contain the point estimate
        ax.vlines(best, report["ci_low"], report["ci_high"], color="C1", lw=3, alpha=0.6, label="test 95% CI")
    if report.get("majority_rate") is not None:
        ax.axhline(report["majority_rate"], color="grey", lw=0.8, ls="--", label="majority rate")
    ax.set_xticks(list(xs), names, rotation=45 if len(names) > 14 else 0)
    ax.set_xlabel("layer")
    ax.set_ylabel(report["metric"])
    ax.set_title(f"{report['task']} - {report['model'].get('label', '')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out: str | Path, metrics_path: str | Path | None = None) -> dict[str, Path]:
    """Write ``results.json``, the plot and the DVC metrics file; returns their paths."""
    paths = output_paths(out)
    if metrics_path is not None:
        paths["metrics"] = Path(metrics_path)
    atomic_write_json(paths["results"], report)
    plot_layers(report, paths["plot"])
    atomic_write_json(paths["metrics"], dvc_metrics(report))
    return paths
