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


def classification(probs: np.ndarray, y: np.ndarray, classes: list[str] | None = None, key: bool = False) -> dict:
    """Accuracy (and, for key tasks, the mir_eval weighted key score).

    Args:
        probs: ``(N, C)`` class scores.
        y: ``(N,)`` true class indices.
        classes: class names (needed for ``key``).
        key: also compute ``mir_eval.key.weighted_score`` (fifths 0.5, relative 0.3, parallel 0.2).
    """
    pred = probs.argmax(1)
    out = {"accuracy": float((pred == y).mean())}
    if key:
        import mir_eval

        scores = [mir_eval.key.weighted_score(classes[t], classes[p]) for t, p in zip(y, pred)]
        out["key_weighted"] = float(np.mean(scores))
    return out


def multilabel(scores: np.ndarray, y: np.ndarray) -> dict:
    """Macro ROC-AUC and macro average precision (scikit-learn) over tags with both classes present.

    Args:
        scores: ``(N, C)`` tag scores.
        y: ``(N, C)`` multi-hot truth.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    keep = (y.min(0) == 0) & (y.max(0) == 1)  # a tag with only one class in this split has no AUC
    if not keep.any():
        return {"roc_auc": float("nan"), "ap": float("nan"), "n_tags_scored": 0}
    return {
        "roc_auc": float(roc_auc_score(y[:, keep], scores[:, keep], average="macro")),
        "ap": float(average_precision_score(y[:, keep], scores[:, keep], average="macro")),
        "n_tags_scored": int(keep.sum()),
    }


def regression(pred: np.ndarray, y: np.ndarray, names: list[str]) -> dict:
    """R2 per target column (``r2_<name>``) and their mean (``r2``), scikit-learn's ``r2_score``."""
    from sklearn.metrics import r2_score

    per = {f"r2_{n}": float(r2_score(y[:, i], pred[:, i])) for i, n in enumerate(names)}
    return {"r2": float(np.mean(list(per.values())))} | per


def beat_f1(estimated: list[np.ndarray], reference: list[np.ndarray], tolerance: float = 0.07) -> dict:
    """Mean per-clip beat F-measure (``mir_eval.beat.f_measure``, +-``tolerance`` seconds).

    mir_eval's ``evaluate`` also trims beats in the first 5 s; the probing protocol scores every beat,
    so ``f_measure`` is called directly.
    """
    import warnings

    import mir_eval

    with warnings.catch_warnings():  # "Estimated beats are empty": a valid (zero-scoring) outcome here
        warnings.simplefilter("ignore", UserWarning)
        scores = [mir_eval.beat.f_measure(r, e, f_measure_threshold=tolerance) for e, r in zip(estimated, reference)]
    return {"beat_f1": float(np.mean(scores)) if scores else float("nan")}


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
