"""Is the student learning more than the code frequencies? Label statistics, a collapse detector and a plot.

A masked-prediction student that has only learned how often each code occurs predicts the most frequent code at
every masked frame: its masked accuracy is then exactly the share of that code among the frames (the
*majority rate*) and its cross-entropy at best the entropy of the code histogram (the *unigram floor*). Both
numbers depend on the teacher alone, so a run is only readable next to them:

- :class:`LabelStats` counts the teacher codes of the training clips once at setup (per codebook: majority code
  and rate, entropy in bits, unigram cross-entropy floor in nats) and, at validation, scores the very frames
  evaluated: the share of the training-majority code and the unigram cross-entropy on them. Comparing the
  student with these frame-matched numbers (not the corpus-wide ones) removes the sampling noise of a few
  validation crops: a collapsed student's accuracy equals the frame-matched majority rate exactly.
- :class:`CollapseDetector` flags a run whose validation accuracy stays within a band of the majority rate in
  every codebook for N validations in a row ("predicting code frequencies only"), and notes a recovery.
- :func:`plot_curves` draws validation accuracy vs the majority rate per codebook and the CE vs the unigram floor.
- :func:`transition_stats` measures how predictable a label sequence is from its own past (same-code rate with
  the neighbour, held-out conditional cross-entropy given the code ``lag`` frames earlier): a teacher whose codes
  change at every frame independently of their context cannot be predicted at masked frames beyond the unigram.

The code counting reuses :func:`mert.teachers.usage.code_histograms` / ``usage_from_histograms``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mert.teachers.usage import CodeUsage, code_histograms, usage_from_histograms

log = logging.getLogger(__name__)

MAX_USAGE_CLIPS = 4096
"""At most this many clips (evenly spaced over the corpus order) are counted at setup: a few MB of uint16."""
SMOOTHING = 0.5
"""Additive (Jeffreys) smoothing of the code histogram for the unigram cross-entropy of unseen codes."""


def ce_nats_from_bits(bits: float) -> float:
    """Entropy in bits -> nats (the unit of ``F.cross_entropy``)."""
    return bits * math.log(2.0)


@dataclass
class LabelStats:
    """Per-codebook code statistics of the training labels, and their frame-matched validation counterparts.

    Attributes:
        hist: (K, C) int64 code counts over the counted training frames.
        clips: number of clips counted.
    """

    hist: np.ndarray
    clips: int
    usage: list[CodeUsage] = field(init=False)
    _log_p: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.hist = np.asarray(self.hist, dtype=np.int64)
        self.usage = usage_from_histograms(self.hist)
        p = (self.hist + SMOOTHING) / (self.hist.sum(1, keepdims=True) + SMOOTHING * self.hist.shape[1])
        self._log_p = torch.from_numpy(np.log(p))  # (K, C) float64

    @classmethod
    def from_labels(cls, labels, clips: Sequence[Any], max_clips: int = MAX_USAGE_CLIPS) -> LabelStats:
        """Count the codes of whole clips (``labels.crop(clip, 0, clip.length)``) of a label source.

        Args:
            labels: a :class:`mert.train.labels.LabelSource`.
            clips: the training clips.
            max_clips: count at most this many clips, evenly spaced over ``clips`` (deterministic).

        Raises:
            ValueError: no clips, or codes outside ``[0, labels.codebook_size)``.
        """
        if not clips:
            raise ValueError("no clips to count label codes on")
        idx = np.unique(np.linspace(0, len(clips) - 1, min(len(clips), max_clips)).round().astype(int))
        chosen = [clips[i] for i in idx]
        codes = (labels.crop(c, 0, c.length) for c in chosen)  # (K, T_i) each
        return cls(code_histograms(codes, labels.codebook_size), len(chosen))

    @property
    def n_codebooks(self) -> int:
        return self.hist.shape[0]

    @property
    def majority(self) -> list[float]:
        """Majority-class rate per codebook (share of the most frequent code)."""
        return [u.top_share for u in self.usage]

    @property
    def unigram_ce(self) -> list[float]:
        """Unigram cross-entropy floor per codebook in nats (the histogram's entropy)."""
        return [ce_nats_from_bits(u.entropy_bits) for u in self.usage]

    def summary(self) -> dict[str, float]:
        """Flat metrics: ``labels/majority_k``, ``labels/entropy_bits_k``, ``labels/unigram_ce_k`` (nats),
        ``labels/distinct_k``, and ``labels/unigram_ce`` (sum over codebooks, comparable to the summed CE).
        """
        out: dict[str, float] = {}
        for u in self.usage:
            k = u.codebook
            out[f"labels/majority_{k}"] = u.top_share
            out[f"labels/entropy_bits_{k}"] = u.entropy_bits
            out[f"labels/unigram_ce_{k}"] = ce_nats_from_bits(u.entropy_bits)
            out[f"labels/distinct_{k}"] = float(u.distinct)
        out["labels/unigram_ce"] = float(sum(self.unigram_ce))
        out["labels/clips_counted"] = float(self.clips)
        return out

    def params(self) -> dict[str, Any]:
        """Run params per codebook: ``majority_k``, ``entropy_bits_k``, ``unigram_ce_k`` (rounded), ``top_code_k``."""
        out: dict[str, Any] = {"clips_counted": self.clips}
        for u in self.usage:
            k = u.codebook
            out[f"majority_{k}"] = round(u.top_share, 4)
            out[f"entropy_bits_{k}"] = round(u.entropy_bits, 4)
            out[f"unigram_ce_{k}"] = round(ce_nats_from_bits(u.entropy_bits), 4)
            out[f"top_code_{k}"] = u.top_code
        return out

    def as_json(self) -> dict[str, Any]:
        """What ``label_usage.json`` holds: the counted clips and each codebook's :class:`CodeUsage`."""
        return {
            "clips_counted": self.clips,
            "unigram_ce_nats": float(sum(self.unigram_ce)),
            "codebooks": [{**u.as_dict(), "unigram_ce_nats": ce_nats_from_bits(u.entropy_bits)} for u in self.usage],
        }

    def frame_terms(self, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frame-matched reference numbers for evaluated frames.

        Args:
            targets: (N, K) integer codes of the frames a metric was computed on (e.g. the masked frames).

        Returns:
            ``{"majority_k": share of the training-majority code, "unigram_ce_k": mean -log p_train(code)}`` per
            codebook k, as float64 scalars on the CPU: what a student that predicts the training code
            frequencies scores on exactly these frames.
        """
        t = targets.detach().long().cpu()
        top = torch.tensor([u.top_code for u in self.usage])  # (K,)
        out: dict[str, torch.Tensor] = {}
        for k in range(self.n_codebooks):
            out[f"majority_{k}"] = (t[:, k] == top[k]).double().mean()
            out[f"unigram_ce_{k}"] = -self._log_p[k][t[:, k]].mean()
        return out


class CollapseDetector:
    """Flags N consecutive validations with every codebook's accuracy within ``band`` of its majority rate.

    Args:
        patience: N, validations in a row that raise the warning.
        band: the accuracy margin counted as "at the majority rate" (absolute, e.g. 0.01).
    """

    def __init__(self, patience: int = 3, band: float = 0.01):
        if patience < 1 or band < 0:
            raise ValueError(f"patience must be >= 1 and band >= 0, got {patience}, {band}")
        self.patience, self.band = patience, band
        self.streak = 0
        self.warned = False

    def update(self, margins: Sequence[float]) -> str | None:
        """Feed one validation's per-codebook margins (accuracy - majority rate).

        Returns:
            ``"collapsed"`` when the streak reaches ``patience`` (once), ``"recovered"`` at the first validation
            outside the band after a warning, else None.
        """
        inside = bool(margins) and all(abs(m) <= self.band for m in margins)
        if inside:
            self.streak += 1
            if self.streak >= self.patience and not self.warned:
                self.warned = True
                return "collapsed"
            return None
        self.streak = 0
        if self.warned:
            self.warned = False
            return "recovered"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self.streak, "warned": self.warned}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.streak, self.warned = int(state.get("streak", 0)), bool(state.get("warned", False))


def margins_of(val: Mapping[str, float], teacher: str, n_codebooks: int, prefix: str = "val/") -> list[float]:
    """Per-codebook ``acc - majority`` from validation metrics holding ``acc/{teacher}_k`` and ``majority_k``."""
    return [val[f"{prefix}acc/{teacher}_{k}"] - val[f"{prefix}majority_{k}"] for k in range(n_codebooks)]


def plot_curves(
    history: Sequence[Mapping[str, float]], teacher: str, n_codebooks: int, path: str | Path, title: str = ""
) -> Path:
    """PNG of validation masked accuracy vs majority rate per codebook, and CE vs the unigram floor, over steps.

    Args:
        history: validation rows with ``step``, ``val/acc/{teacher}_k``, ``val/majority_k``,
            ``val/loss/{teacher}_ce_k`` and ``val/unigram_ce_k`` (the trainer's validation metrics).
        teacher: the metric-name teacher (``rvq``, ``kmeans``, ...).
        n_codebooks: K.
        path: output PNG, written atomically.
        title: figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mert.utils.io import atomic_write

    steps = [row["step"] for row in history]
    fig, (ax_acc, ax_ce) = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
    colors = plt.get_cmap("tab10")
    for k in range(n_codebooks):
        c = colors(k % 10)
        ax_acc.plot(steps, [r[f"val/acc/{teacher}_{k}"] for r in history], "-o", ms=3, color=c, label=f"cb {k}")
        ax_acc.plot(steps, [r[f"val/majority_{k}"] for r in history], "--", color=c, lw=1)
    ax_acc.set(xlabel="step", ylabel="masked accuracy", title="val accuracy (solid) vs majority rate (dashed)")
    ce = [sum(r[f"val/loss/{teacher}_ce_{k}"] for k in range(n_codebooks)) / n_codebooks for r in history]
    floor = [sum(r[f"val/unigram_ce_{k}"] for k in range(n_codebooks)) / n_codebooks for r in history]
    ax_ce.plot(steps, ce, "-o", ms=3, label="val CE (mean over codebooks)")
    ax_ce.plot(steps, floor, "--", label="unigram floor (training code frequencies)")
    ax_ce.set(xlabel="step", ylabel="nats", title="masked CE vs unigram floor")
    ax_ce.legend(fontsize=8)
    if n_codebooks <= 10:
        ax_acc.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------- predictability
def transition_stats(
    train: Iterable[np.ndarray], test: Iterable[np.ndarray], codebook_size: int, lag: int = 1, alpha: float = 0.1
) -> dict[str, float]:
    """How well a code is predicted by the code ``lag`` frames earlier, fitted on ``train``, scored on ``test``.

    A smoothed bigram ``p(x_t | x_{t-lag}) = (n(a, b) + alpha C p(b)) / (n(a) + alpha C)`` (backing off to the
    smoothed unigram ``p``) is counted on the training sequences; the held-out cross-entropy estimates the
    conditional entropy ``H(x_t | x_{t-lag})`` without the large downward bias of the plug-in estimate (1024^2
    cells, few frames). Gains over the unigram bound what any context model of the codes can gain.

    Args:
        train: 1-D integer code sequences (one codebook, one per clip) to count on.
        test: held-out sequences to score.
        codebook_size: C.
        lag: distance in frames to the conditioning code (>= 1).
        alpha: smoothing strength (pseudo-counts per row, times C).

    Returns:
        ``same_rate`` (share of test frames equal to the code ``lag`` earlier), ``unigram_ce`` and ``bigram_ce``
        (held-out nats), ``majority_acc`` (test share of the training-majority code) and ``bigram_acc``
        (held-out accuracy of the bigram's argmax).
    """
    if lag < 1:
        raise ValueError(f"lag must be >= 1, got {lag}")
    C = codebook_size
    train, test = [np.asarray(x, np.int64) for x in train], [np.asarray(x, np.int64) for x in test]
    uni = np.bincount(np.concatenate(train), minlength=C).astype(np.float64) + SMOOTHING
    p_uni = uni / uni.sum()
    pairs = np.zeros((C, C), np.float64)
    for x in train:
        np.add.at(pairs, (x[:-lag], x[lag:]), 1.0)
    cond = (pairs + alpha * C * p_uni[None]) / (pairs.sum(1, keepdims=True) + alpha * C)  # (C, C) rows sum to 1
    prev = np.concatenate([x[:-lag] for x in test if len(x) > lag])
    nxt = np.concatenate([x[lag:] for x in test if len(x) > lag])
    if prev.size == 0:
        raise ValueError(f"no held-out sequence is longer than lag={lag}")
    return {
        "same_rate": float((prev == nxt).mean()),
        "unigram_ce": float(-np.log(p_uni[nxt]).mean()),
        "bigram_ce": float(-np.log(cond[prev, nxt]).mean()),
        "majority_acc": float((nxt == p_uni.argmax()).mean()),
        "bigram_acc": float((cond.argmax(1)[prev] == nxt).mean()),
    }


# ---------------------------------------------------------------------------------------------- in a run
COLLAPSE_TAG = "collapse.warning"
"""Run tag: ``"true"`` while the collapse warning stands, ``"false"`` otherwise (set at the setup of a fresh run)."""
USAGE_FILE = "label_usage.json"
PLOT_FILE = "collapse_curves.png"


class RunDiagnostics:
    """The trainer's side of the diagnostics: label statistics at setup, margins + detector at each validation.

    Args:
        stats: the training labels' :class:`LabelStats`.
        teacher: metric-name teacher (``acc/{teacher}_k``).
        out_dir: the run directory (``label_usage.json``, ``collapse_curves.png``).
        patience: validations in a row at the majority rate that raise the warning.
        band: accuracy margin counted as "at the majority rate".
        logger: rank-0 logger or None; ``set_tags`` / ``log_artifact`` are used when it has them.
        is_main: this process reports (the warning is logged once, by rank 0; every rank tracks the state).
    """

    def __init__(
        self,
        stats: LabelStats,
        teacher: str,
        out_dir: str | Path,
        patience: int,
        band: float,
        logger=None,
        is_main: bool = True,
    ):
        self.stats, self.teacher, self.out = stats, teacher, Path(out_dir)
        self.detector = CollapseDetector(patience, band)
        self.logger, self.is_main = logger, is_main
        self.history: list[dict[str, float]] = []

    @property
    def plot_path(self) -> Path:
        return self.out / PLOT_FILE

    def frame_terms(self, labels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Majority rate and unigram CE on the masked frames of a batch: labels (B, K, T_lab), mask (B, T)."""
        T = mask.shape[1]
        targets = labels[..., :T].transpose(1, 2)[mask.cpu()]  # (N, K)
        return {k: v.float() for k, v in self.stats.frame_terms(targets).items()}

    def margins(self, metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
        """``{prefix}acc_margin_k`` = accuracy - frame-matched majority rate, per codebook."""
        m = margins_of(metrics, self.teacher, self.stats.n_codebooks, prefix)
        return {f"{prefix}acc_margin_{k}": v for k, v in enumerate(m)}

    def on_setup(self, fresh: bool) -> None:
        """Rank 0: write ``label_usage.json``; on a fresh run log the label statistics (step-0 metrics, tag)."""
        from mert.utils.io import atomic_write_json

        if not self.is_main:
            return
        atomic_write_json(self.out / USAGE_FILE, self.stats.as_json())
        if fresh and self.logger is not None:
            self.logger.log_dict(self.stats.summary(), step=0)
            self._tags({COLLAPSE_TAG: "false"})
        for k, u in enumerate(self.stats.usage):
            log.info(
                "labels codebook %d: majority code %d at %.3f of %d frames, %d/%d codes used, entropy %.2f bits "
                "(unigram CE floor %.2f nats)",
                k, u.top_code, u.top_share, u.frames, u.distinct, u.codebook_size, u.entropy_bits,
                ce_nats_from_bits(u.entropy_bits),
            )  # fmt: skip

    def on_validation(self, step: int, val: dict[str, float]) -> dict[str, float]:
        """Run the detector on ``val`` (with its ``val/acc_margin_k``), warn/tag, redraw the plot; adds
        ``val/collapsed`` (1 while the warning stands).
        """
        event = self.detector.update([val[f"val/acc_margin_{k}"] for k in range(self.stats.n_codebooks)])
        val["val/collapsed"] = float(self.detector.warned)
        self.history.append({"step": float(step), **val})
        if event is not None and self.is_main:
            self._report(event, step, val)
        if self.logger is not None:
            self.plot()
        return val

    def _report(self, event: str, step: int, val: Mapping[str, float]) -> None:
        K, t = self.stats.n_codebooks, self.teacher
        ce = sum(val[f"val/loss/{t}_ce_{k}"] for k in range(K)) / K
        floor = sum(val[f"val/unigram_ce_{k}"] for k in range(K)) / K
        if event == "collapsed":
            why = (
                "below the floor: it learns something, but never enough to change its top guess"
                if ce < floor
                else "not below the floor: nothing beyond the code frequencies yet"
            )
            msg = (
                f"step {step}: validation accuracy has stayed within {self.detector.band} of the majority rate in "
                f"every codebook for {self.detector.patience} validations: the student predicts code frequencies "
                f"only. Val CE {ce:.3f} vs unigram floor {floor:.3f} nats per codebook ({why}). "
                "See docs/results/collapse.md."
            )
            log.warning(msg)
            self._tags({COLLAPSE_TAG: "true", "collapse.since_step": step, "collapse.message": msg})
        else:
            log.info("step %d: validation accuracy left the majority rate: collapse warning cleared", step)
            self._tags({COLLAPSE_TAG: "false", "collapse.recovered_step": step})

    def _tags(self, tags: Mapping[str, Any]) -> None:
        if self.logger is not None and hasattr(self.logger, "set_tags"):
            self.logger.set_tags(tags)

    def plot(self) -> Path | None:
        """Redraw ``collapse_curves.png`` from the validations so far and log it as an artifact (rank 0)."""
        if self.logger is None or not self.history:
            return None
        title = f"{self.out.name}: {self.teacher} labels"
        try:
            path = plot_curves(self.history, self.teacher, self.stats.n_codebooks, self.plot_path, title)
        except Exception as e:  # a plot must never stop training
            log.warning("collapse plot failed: %s: %s", type(e).__name__, e)
            return None
        if hasattr(self.logger, "log_artifact"):
            self.logger.log_artifact(path)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"detector": self.detector.state_dict(), "history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore (a checkpoint written before the diagnostics existed has none: start empty)."""
        state = state or {}
        self.detector.load_state_dict(state.get("detector", {}))
        self.history = [dict(r) for r in state.get("history", [])]
