"""Does a probe score mean anything? Uncertainty, reference rates and paired comparisons of probe results.

* :func:`bootstrap_ci`: percentile-bootstrap CI of the test metric over test clips (Efron & Tibshirani 1993,
  ch. 13). Metrics that are a mean of per-clip scores (accuracy, the mir_eval weighted key score, per-clip beat
  F-measure, per-excerpt SDR) resample the per-clip scores; the others (macro ROC-AUC, mean R2) are recomputed
  on each resample of the clip-level predictions.
* :func:`reference_rate`: what a probe that learned nothing scores with the task's own metric: always the most
  frequent train class (accuracy or weighted key score), the train tag frequencies (ROC-AUC 0.5), the train mean
  (R2 <= 0), an isochronous grid at the median train tempo (beat F-measure, :func:`mert.probe.beats.grid_baseline`).
* :func:`compare`: paired bootstrap of the score difference of two results files of the same task over their
  common test clips (the same resampled clips for both, Koehn 2004 "Statistical significance tests for MT
  evaluation"); the verdict is "beats" when the whole CI is above 0, "worse" when below, else "no difference
  detectable". The interval covers the sampling of test clips only, not the probe's own training randomness
  (seed, dropout): on the demo's beat task another probe seed moved F1 by ~0.003, so a verdict on a difference of
  that size says little about the backbones.
* :func:`summarize`: per task, rows per model (pretrained, its random-init twin, handcrafted baselines) and the
  verdict lines against the random init and the best handcrafted baseline, from results files; rendered as text
  (:func:`format_text`), Markdown (:func:`markdown`) or table rows (:func:`table_rows`). The Prefect flow and
  ``mert probe-compare`` only call these.

Everything reads the ``test_clips`` record of ``results.json`` (clip ids + per-clip scores, or predictions and
truth), written by :func:`mert.probe.api.probe`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mert.probe import metrics

LEVEL = 0.95
N_BOOT = 1000
VERDICTS = ("beats", "worse", "no difference detectable")
ROLES = ("pretrained", "random-init", "handcrafted")


class EvidenceError(ValueError):
    """Two results cannot be compared, or a results file lacks what the evidence needs (the message says which)."""


# ------------------------------------------------------------------------------------------------- bootstrap
def _resamples(n: int, n_boot: int, seed: int, chunk: int = 256) -> Iterator[np.ndarray]:
    """``(<=chunk, n)`` blocks of clip indices drawn with replacement; ``n_boot`` rows in all, seeded."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def _stat(kind: str, rec: Mapping[str, Any], idx: np.ndarray) -> np.ndarray:
    """The metric on each resample ``idx`` ``(B, n)`` of a clip record (arrays, not lists)."""
    if "scores" in rec:
        return rec["scores"][idx].mean(1)
    return np.array([metrics.from_predictions(kind, rec["pred"][i], rec["truth"][i]) for i in idx])


def _arrays(rec: Mapping[str, Any], where: str = "record") -> dict[str, Any]:
    out: dict[str, Any] = {"keys": list(rec["keys"])}
    if "scores" in rec:
        out["scores"] = np.asarray(rec["scores"], np.float64)
    elif "pred" in rec and "truth" in rec:
        out["pred"], out["truth"] = np.asarray(rec["pred"], np.float64), np.asarray(rec["truth"], np.float64)
    else:
        raise EvidenceError(f"{where}: test_clips has neither per-clip 'scores' nor 'pred' + 'truth'")
    return out


def _percentiles(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]  # a resample without a scoreable tag has no ROC-AUC
    if len(values) == 0:
        return None, None
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_ci(kind: str, record: Mapping[str, Any], n_boot: int = N_BOOT, seed: int = 0,
                 level: float = LEVEL) -> tuple[float | None, float | None]:  # fmt: skip
    """Percentile-bootstrap confidence interval of a test metric over test clips.

    Args:
        kind: task kind (selects the metric for prediction records).
        record: ``{"keys", "scores"}`` (per-clip scores; the metric is their mean) or ``{"keys", "pred", "truth"}``
            (clip-level predictions ``(N, C)``; the metric is recomputed on each resample).
        n_boot: resamples (0 disables: ``(None, None)``).
        seed: seed of the resampling (same inputs and seed give the same interval).
        level: coverage (0.95: the 2.5th and 97.5th percentiles).

    Returns:
        ``(low, high)``, or ``(None, None)`` when there is nothing to resample.
    """
    rec = _arrays(record)
    n = len(rec["keys"])
    if n_boot <= 0 or n == 0:
        return None, None
    stats = np.concatenate([_stat(kind, rec, idx) for idx in _resamples(n, n_boot, seed)])
    return _percentiles(stats, level)


def method(record: Mapping[str, Any]) -> str:
    """How :func:`bootstrap_ci` treats a record, in words (stored next to the interval)."""
    what = "per-clip scores" if "scores" in record else "metric recomputed on resampled clip predictions"
    return f"percentile bootstrap over test clips ({what})"


def clip_ids(examples, keys: list[str], root: Path | None) -> list[str]:
    """Stable clip ids for the test record: the path relative to the task root (plus ``@start+duration``).

    Feature keys hold absolute paths; two results of one task probed from different checkouts still compare.
    """
    by_key = {e.key: e for e in examples}
    out = []
    for k in keys:
        e = by_key[k]
        path = e.path
        if root is not None:
            try:
                path = Path(e.path).resolve().relative_to(Path(root).resolve())
            except ValueError:
                pass
        excerpt = f"@{e.start:g}+{e.duration:g}" if (e.start or e.duration is not None) else ""
        out.append(f"{path.as_posix()}{excerpt}")
    return out


# ------------------------------------------------------------------------------------------------- reference rates
def reference_rate(kind: str, train_truth: Any, test_truth: Any, classes: list[str], *,
                   test_seconds: list[float] | None = None, tolerance: float = 0.07) -> dict[str, Any]:  # fmt: skip
    """The test score of a predictor that learned nothing from the audio, with the task's own metric.

    Args:
        kind: task kind.
        train_truth: train targets (class indices ``(N,)``, multi-hot / values ``(N, C)``, or beat-time lists).
        test_truth: test targets, same form.
        classes: class names (class kinds).
        test_seconds: per test clip, its length in seconds (beats: the grid runs to the end of the clip).
        tolerance: beat F-measure window (s).

    Returns:
        ``{"rate": float, "baseline": description}``: always the most frequent train class (class kinds),
        the train tag frequencies for every clip (multi-label: ROC-AUC 0.5), the train mean (regression: R2 <= 0,
        exactly 0 only if the train and test means agree), an isochronous grid at the median train tempo (beats).
    """
    if kind in ("multiclass", "key", "pitch"):
        train = np.asarray(train_truth, np.int64)
        top = int(np.bincount(train, minlength=len(classes)).argmax())  # ties: the first class
        test = np.asarray(test_truth, np.int64)
        rate = metrics.class_scores(np.full_like(test, top), test, classes, key=kind == "key").mean()
        return {"rate": float(rate), "baseline": f"always {classes[top]!r} (the most frequent train class)"}
    if kind in ("multilabel", "regression"):
        train, test = np.asarray(train_truth, np.float64), np.asarray(test_truth, np.float64)
        pred = np.broadcast_to(train.mean(0), test.shape)
        what = "train tag frequencies for every clip" if kind == "multilabel" else "always the train mean"
        return {"rate": metrics.from_predictions(kind, pred, test), "baseline": what}
    if kind == "beats":
        from mert.probe.beats import grid_baseline

        if test_seconds is None:
            raise ValueError("reference_rate: beats need test_seconds (clip lengths)")
        grids, bpm, start = grid_baseline(list(train_truth), test_seconds)
        rate = metrics.beat_scores(grids, list(test_truth), tolerance).mean()
        return {"rate": float(rate),
                "baseline": f"isochronous grid at {bpm:.1f} BPM from {start:.2f} s (median train tempo)"}  # fmt: skip
    raise ValueError(f"reference_rate: no reference predictor for task kind {kind!r}")


# ------------------------------------------------------------------------------------------------- comparisons
def load(results: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A results dict from a path (or the dict itself); a missing or unreadable file is an EvidenceError."""
    if isinstance(results, Mapping):
        return dict(results)
    path = Path(results)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvidenceError(f"{path}: cannot read a probe results file ({e})") from e
    report.setdefault("_path", str(path))
    return report


def _name(report: Mapping[str, Any]) -> str:
    return str(report.get("_path") or report.get("model", {}).get("label") or report.get("task"))


def _record(report: Mapping[str, Any]) -> dict[str, Any]:
    rec = report.get("test_clips")
    if not rec:
        raise EvidenceError(f"{_name(report)}: no per-clip test record ('test_clips'); it was written before probe "
                            "evidence existed: re-run mert probe")  # fmt: skip
    return _arrays(rec, _name(report))


@dataclass
class Comparison:
    """A paired comparison of two results of one task: ``diff = score(a) - score(b)`` on their common test clips."""

    task: str
    metric: str
    a: str
    b: str
    n: int
    diff: float
    low: float | None
    high: float | None
    verdict: str
    level: float = LEVEL
    n_boot: int = N_BOOT

    def interval(self) -> str:
        """``+0.080 [+0.020, +0.150]``."""
        ci = "n/a" if self.low is None else f"{self.low:+.3f}, {self.high:+.3f}"
        return f"{self.diff:+.3f} [{ci}]"

    def text(self, a: str | None = None, b: str | None = None, b_short: str | None = None) -> str:
        """``<a> vs <b> on <task>: +0.080 [+0.020, +0.150] -> beats <b_short>``.

        ``b`` may be a phrase ("its random init", "mfcc (best handcrafted)"); ``b_short`` (default ``b``) names it
        in the outcome.
        """
        a, b = a or self.a, b or self.b
        short = b_short or b
        outcome = {"beats": f"beats {short}", "worse": f"worse than {short}"}.get(self.verdict, self.verdict)
        return f"{a} vs {b} on {self.task}: {self.interval()} -> {outcome}"


def verdict(low: float | None, high: float | None) -> str:
    """``beats`` if the CI of the difference is entirely above 0, ``worse`` if entirely below, else no difference."""
    if low is not None and low > 0:
        return "beats"
    if high is not None and high < 0:
        return "worse"
    return "no difference detectable"


def compare(a: str | Path | Mapping[str, Any], b: str | Path | Mapping[str, Any], n_boot: int = N_BOOT,
            seed: int = 0, level: float = LEVEL) -> Comparison:  # fmt: skip
    """Paired bootstrap of ``score(a) - score(b)`` over the test clips the two results share.

    Each resample draws clips with replacement and scores both results on the same clips, so what the two models
    have in common (hard and easy clips) cancels out of the difference.

    Args:
        a: ``results.json`` path (or loaded dict) of model A.
        b: the same for model B, same task.
        n_boot: resamples.
        seed: resampling seed (deterministic).
        level: CI coverage.

    Raises:
        EvidenceError: different tasks or metrics, a file without a per-clip record, no common clip, or different
            ground truth on a common clip.
    """
    ra, rb = load(a), load(b)
    if (ra.get("task"), ra.get("metric")) != (rb.get("task"), rb.get("metric")):
        raise EvidenceError(f"{_name(ra)} ({ra.get('task')}, {ra.get('metric')}) and {_name(rb)} ({rb.get('task')}, "
                            f"{rb.get('metric')}) are not results of the same task and metric")  # fmt: skip
    xa, xb = _record(ra), _record(rb)
    pos = {k: i for i, k in enumerate(xb["keys"])}
    common = [(i, pos[k]) for i, k in enumerate(xa["keys"]) if k in pos]
    if not common:
        raise EvidenceError(f"{_name(ra)} and {_name(rb)} share no test clip (different task directories?)")
    ia, ib = (np.array(v) for v in zip(*common))
    xa, xb = _subset(xa, ia), _subset(xb, ib)
    if "truth" in xa and not np.array_equal(xa["truth"], xb["truth"]):
        raise EvidenceError(f"{_name(ra)} and {_name(rb)} disagree on the ground truth of common test clips")
    kind = ra.get("task_kind", "")
    n = len(ia)
    diff = float(_stat(kind, xa, np.arange(n)[None])[0] - _stat(kind, xb, np.arange(n)[None])[0])
    low = high = None
    if n_boot > 0:
        deltas = np.concatenate([_stat(kind, xa, idx) - _stat(kind, xb, idx) for idx in _resamples(n, n_boot, seed)])
        low, high = _percentiles(deltas, level)
    label_a, label_b = _label(ra), _label(rb)
    return Comparison(str(ra["task"]), str(ra["metric"]), label_a, label_b, n, diff, low, high, verdict(low, high),
                      level, n_boot)  # fmt: skip


def _subset(rec: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    return {k: ([v[i] for i in idx] if k == "keys" else v[idx]) for k, v in rec.items()}


def _label(report: Mapping[str, Any]) -> str:
    return str(report.get("model", {}).get("label") or _name(report))


# ------------------------------------------------------------------------------------------------- summaries
def role_of(spec: str) -> str:
    """``random-init`` for ``random:<preset>``, ``handcrafted`` for mfcc/chroma/cqt, else ``pretrained``."""
    from mert.probe.models import HANDCRAFTED

    if spec.startswith("random:"):
        return "random-init"
    return "handcrafted" if spec in HANDCRAFTED else "pretrained"


def row(report: Mapping[str, Any], label: str | None = None, role: str | None = None) -> dict[str, Any]:
    """One table row of a results dict (``None`` where a pre-evidence file lacks a field)."""
    spec = str(report.get("model", {}).get("label", ""))
    return {
        "model": label or spec,
        "role": role or role_of(spec),
        "score": report.get("test_score"),
        "ci_low": report.get("ci_low"),
        "ci_high": report.get("ci_high"),
        "n_test": report.get("n_test"),
        "majority_rate": report.get("majority_rate"),
        "majority_baseline": report.get("majority_baseline"),
        "best_layer": report.get("best_layer"),
        "results": report.get("_path"),
    }


@dataclass
class TaskSummary:
    """The evidence table of one task: rows per model and the plain-language verdict lines."""

    task: str
    metric: str
    rows: list[dict[str, Any]]
    verdicts: list[str] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    group: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(entries: list[Mapping[str, Any]], n_boot: int = N_BOOT, seed: int = 0) -> list[TaskSummary]:
    """Evidence tables for a set of probe results, one per (group, task).

    Args:
        entries: one per results file: ``results`` (path or loaded dict), and optionally ``label`` (display name,
            default the MODEL spec), ``role`` (``pretrained`` / ``random-init`` / ``handcrafted``, default from the
            spec, :func:`role_of`) and ``group`` (e.g. the pretraining profile; default "").
        n_boot: paired-bootstrap resamples per comparison.
        seed: resampling seed.

    Returns:
        Per task, rows ordered pretrained, random-init, handcrafted (each by score), and for every pretrained
        model a verdict against each random-init model ("its random init" when there is one) and against the best
        handcrafted baseline (highest test score). A comparison that cannot be made says why in its line.
    """
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for entry in entries:
        report = load(entry["results"])
        r = row(report, entry.get("label"), entry.get("role"))
        groups.setdefault((str(entry.get("group", "")), str(report["task"])), []).append((r, report))
    out = []
    for (group, task), items in groups.items():
        items.sort(key=_order)
        summary = TaskSummary(task, str(items[0][1].get("metric", "")), [r for r, _ in items], group=group)
        randoms = [it for it in items if it[0]["role"] == "random-init"]
        crafted = [it for it in items if it[0]["role"] == "handcrafted" and it[0]["score"] is not None]
        best_crafted = max(crafted, key=lambda it: it[0]["score"]) if crafted else None
        for model in (it for it in items if it[0]["role"] == "pretrained"):
            others = [(it, "its random init" if len(randoms) == 1 else it[0]["model"], None) for it in randoms]
            if best_crafted is not None:
                name = best_crafted[0]["model"]
                others.append((best_crafted, f"{name} (best handcrafted)", name))
            for other, phrase, short in others:
                _add_verdict(summary, model, other, phrase, short, n_boot, seed)
        out.append(summary)
    return out


def _order(item) -> tuple[int, float]:
    """Rows: by role (pretrained, random-init, handcrafted), then by score, highest first."""
    r = item[0]
    score = r["score"] if isinstance(r["score"], (int, float)) else -np.inf
    return (ROLES.index(r["role"]) if r["role"] in ROLES else len(ROLES), -score)


def _add_verdict(summary: TaskSummary, model, other, phrase: str, short: str | None, n_boot: int, seed: int) -> None:
    (row_a, rep_a), (row_b, rep_b) = model, other
    try:
        c = compare(rep_a, rep_b, n_boot, seed)
    except EvidenceError as e:
        summary.verdicts.append(f"{row_a['model']} vs {phrase} on {summary.task}: cannot compare ({e})")
        return
    summary.verdicts.append(c.text(row_a["model"], phrase, short))
    summary.comparisons.append(asdict(c) | {"a": row_a["model"], "b": row_b["model"]})


# ------------------------------------------------------------------------------------------------- rendering
def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if not isinstance(v, (int, float)) or v != v else f"{v:.{digits}f}"


def score_cell(r: Mapping[str, Any]) -> str:
    """``0.412 [0.351, 0.470]`` (``[n/a]`` for a results file without an interval)."""
    ci = "n/a" if r.get("ci_low") is None else f"{_num(r['ci_low'])}, {_num(r['ci_high'])}"
    return f"{_num(r.get('score'))} [{ci}]"


COLUMNS = ("model", "role", "score [95% CI]", "n test", "majority rate", "best layer")


def table_rows(summary: TaskSummary) -> list[dict[str, Any]]:
    """Rows for a table artifact: one dict per model with the :data:`COLUMNS`."""
    return [dict(zip(COLUMNS, (r["model"], r["role"], score_cell(r), r["n_test"] if r["n_test"] is not None else "n/a",
                               _num(r["majority_rate"]), r["best_layer"])))  # fmt: skip
            for r in summary.rows]  # fmt: skip


def title(summary: TaskSummary) -> str:
    where = f" [{summary.group}]" if summary.group else ""
    return f"{summary.task}{where}: test {summary.metric} at the best validation layer"


def format_text(summary: TaskSummary) -> str:
    """A plain-text table (fixed-width columns) with the verdict lines under it."""
    rows = [list(COLUMNS)] + [[str(v) for v in r.values()] for r in table_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [title(summary)] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    note = _majority_note(summary)
    return "\n".join(lines + ([note] if note else []) + summary.verdicts)


def _majority_note(summary: TaskSummary) -> str:
    what = next((r["majority_baseline"] for r in summary.rows if r.get("majority_baseline")), None)
    return f"majority rate: {what}" if what else ""


def markdown(summary: TaskSummary) -> str:
    """A Markdown section: title, table, what the majority rate is, verdict lines."""
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
    body = "\n".join("| " + " | ".join(str(v) for v in r.values()) + " |" for r in table_rows(summary))
    note = _majority_note(summary)
    verdicts = "\n".join(f"- {v}" for v in summary.verdicts)
    return f"### {title(summary)}\n\n{head}\n{body}\n\n" + (f"{note}\n\n" if note else "") + verdicts + "\n"


def describe(report: Mapping[str, Any]) -> str:
    """One line of evidence for a single results dict: score, CI, n test, majority rate."""
    r = row(report)
    majority = f"majority rate {_num(r['majority_rate'])}"
    if r.get("majority_baseline"):
        majority += f" ({r['majority_baseline']})"
    return f"test {report.get('metric')} {score_cell(r)} (95% CI), n test {r['n_test']}, {majority}"
