"""Task metrics, computed by the libraries MIR papers use (scikit-learn, mir_eval).

Every function returns a dict of metric name -> float; :data:`PRIMARY` names the one used for model
selection (higher is better for all of them).
"""

from __future__ import annotations

import numpy as np

PRIMARY = {
    "multiclass": "accuracy",
    "pitch": "accuracy",
    "key": "key_weighted",
    "multilabel": "roc_auc",
    "regression": "r2",
    "beats": "beat_f1",
    "separation": "sdr",
}


def class_scores(pred: np.ndarray, y: np.ndarray, classes: list[str] | None = None, key: bool = False) -> np.ndarray:
    """Per-clip score of a class prediction: 1/0 correctness, or ``mir_eval.key.weighted_score`` for keys.

    Args:
        pred: ``(N,)`` predicted class indices.
        y: ``(N,)`` true class indices.
        classes: class names (needed for ``key``).
        key: score with the mir_eval weighted key score (same key 1, fifth 0.5, relative 0.3, parallel 0.2).

    Returns:
        ``(N,)`` float64 per-clip scores; their mean is the task metric.
    """
    if not key:
        return (np.asarray(pred) == np.asarray(y)).astype(np.float64)
    import mir_eval

    return np.array([mir_eval.key.weighted_score(classes[t], classes[p]) for t, p in zip(y, pred)], np.float64)


def classification(probs: np.ndarray, y: np.ndarray, classes: list[str] | None = None, key: bool = False) -> dict:
    """Accuracy (and, for key tasks, the mir_eval weighted key score).

    Args:
        probs: ``(N, C)`` class scores.
        y: ``(N,)`` true class indices.
        classes: class names (needed for ``key``).
        key: also compute ``mir_eval.key.weighted_score`` (fifths 0.5, relative 0.3, parallel 0.2).
    """
    pred = probs.argmax(1)
    out = {"accuracy": float(class_scores(pred, y).mean())}
    if key:
        out["key_weighted"] = float(class_scores(pred, y, classes, key=True).mean())
    return out


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Macro ROC-AUC (scikit-learn) over the tags that have both classes in ``y``; NaN when none has.

    Args:
        scores: ``(N, C)`` tag scores.
        y: ``(N, C)`` multi-hot truth.
    """
    from sklearn.metrics import roc_auc_score

    keep = (y.min(0) == 0) & (y.max(0) == 1)
    return float(roc_auc_score(y[:, keep], scores[:, keep], average="macro")) if keep.any() else float("nan")


def multilabel(scores: np.ndarray, y: np.ndarray) -> dict:
    """Macro ROC-AUC and macro average precision (scikit-learn) over tags with both classes present.

    Args:
        scores: ``(N, C)`` tag scores.
        y: ``(N, C)`` multi-hot truth.
    """
    from sklearn.metrics import average_precision_score

    keep = (y.min(0) == 0) & (y.max(0) == 1)  # a tag with only one class in this split has no AUC
    if not keep.any():
        return {"roc_auc": float("nan"), "ap": float("nan"), "n_tags_scored": 0}
    return {
        "roc_auc": roc_auc(scores, y),
        "ap": float(average_precision_score(y[:, keep], scores[:, keep], average="macro")),
        "n_tags_scored": int(keep.sum()),
    }


def regression(pred: np.ndarray, y: np.ndarray, names: list[str]) -> dict:
    """R2 per target column (``r2_<name>``) and their mean (``r2``), scikit-learn's ``r2_score``."""
    from sklearn.metrics import r2_score

    per = {f"r2_{n}": float(r2_score(y[:, i], pred[:, i])) for i, n in enumerate(names)}
    return {"r2": float(np.mean(list(per.values())))} | per


def from_predictions(kind: str, pred: np.ndarray, truth: np.ndarray) -> float:
    """The primary metric of a task whose metric is not a mean of per-clip scores, from clip-level predictions.

    Args:
        kind: ``multilabel`` (macro ROC-AUC, :func:`roc_auc`) or ``regression`` (mean R2 over columns).
        pred: ``(N, C)`` tag scores or predicted values.
        truth: ``(N, C)`` multi-hot truth or true values.

    Raises:
        ValueError: for a kind whose metric is a mean of per-clip scores (use those instead).
    """
    if kind == "multilabel":
        return roc_auc(pred, truth)
    if kind == "regression":
        return regression(pred, truth, [str(i) for i in range(truth.shape[1])])["r2"]
    raise ValueError(f"{kind!r}: the metric is a mean of per-clip scores, not computed from predictions")


def beat_matches(reference: np.ndarray, estimated: np.ndarray, window: float) -> int:
    """Size of the maximum one-to-one matching of beats within +-``window`` s: ``len(mir_eval.util.match_events)``.

    mir_eval builds the hit graph with the same ``searchsorted`` bounds and runs Hopcroft-Karp on it. The graph is
    an interval graph (each estimate sees a contiguous run of references, and the runs move right with the
    estimates), where the greedy rule "estimates in time order, each takes the earliest free reference in its
    window" is a maximum matching; usually no window holds two beats and the count is the number of hits.
    ~30x faster than ``match_events``; equal to it on every input (``tests/probe/test_evidence.py``).

    Args:
        reference: ``(n,)`` reference beat times in seconds, increasing.
        estimated: ``(m,)`` estimated beat times in seconds, increasing.
        window: tolerance in seconds.
    """
    if len(reference) == 0 or len(estimated) == 0:
        return 0
    lo = np.searchsorted(reference, estimated - window, side="left")
    hi = np.searchsorted(reference, estimated + window, side="right")
    hit = lo < hi
    if (hi - lo <= 1).all() and (np.diff(lo[hit]) > 0).all():  # no window holds two beats: no choice to make
        return int(hit.sum())
    n, free = 0, 0
    for a, b in zip(lo.tolist(), hi.tolist()):
        free = max(free, a)
        if free < b:
            n, free = n + 1, free + 1
    return n


def f_measure(n_match, n_est, n_ref):
    """Beat F-measure from counts, as ``mir_eval.beat.f_measure`` computes it (0 when either side is empty).

    Works elementwise on arrays: ``(...)`` counts -> ``(...)`` float64 scores.
    """
    m, ne, nr = (np.asarray(v, np.float64) for v in (n_match, n_est, n_ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        p, r = m / ne, m / nr
        f = 2.0 * p * r / (p + r)  # mir_eval.util.f_measure with beta = 1
    return np.where((ne == 0) | (nr == 0) | (m == 0), 0.0, f)


def beat_scores(estimated: list[np.ndarray], reference: list[np.ndarray], tolerance: float = 0.07) -> np.ndarray:
    """Per-clip beat F-measure, equal to ``mir_eval.beat.f_measure(ref, est, tolerance)`` clip by clip.

    Args:
        estimated: per clip, increasing beat times (s).
        reference: per clip, increasing beat times (s).
        tolerance: +-window in seconds.

    Returns:
        ``(n_clips,)`` float64 scores.
    """
    counts = [(beat_matches(r, e, tolerance), len(e), len(r)) for e, r in zip(estimated, reference)]
    return f_measure(*np.array(counts, np.int64).reshape(-1, 3).T)


def beat_f1(estimated: list[np.ndarray], reference: list[np.ndarray], tolerance: float = 0.07) -> dict:
    """Mean per-clip beat F-measure (``mir_eval.beat.f_measure``, +-``tolerance`` seconds).

    mir_eval's ``evaluate`` also trims beats in the first 5 s; the probing protocol scores every beat,
    so the F-measure itself is used (computed by :func:`beat_scores`, equal to mir_eval's).
    """
    scores = beat_scores(estimated, reference, tolerance)
    return {"beat_f1": float(scores.mean()) if len(scores) else float("nan")}


def sdr(estimate: np.ndarray, reference: np.ndarray, eps: float = 1e-8) -> float:
    """Signal-to-distortion ratio in dB, ``10 log10(|s|^2 / |s - s_hat|^2)`` (the "new SDR" of MDX/museval v4's
    time-invariant simplification; no projection onto interferers).

    Args:
        estimate: ``(L,)`` estimated source.
        reference: ``(L,)`` true source.
        eps: keeps silent references and perfect estimates finite.
    """
    num = float(np.sum(reference**2)) + eps
    den = float(np.sum((reference - estimate) ** 2)) + eps
    return float(10 * np.log10(num / den))
