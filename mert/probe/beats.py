"""Beat tracking by frame-wise classification: targets at 75 Hz and a simple peak picker.

MARBLE decodes the frame activations with madmom's DBN beat tracker; madmom does not install here
(its wheels need an old Cython/numpy toolchain), so beats are decoded by peak picking instead: local maxima
of the activation over +-``min_interval``/2, above a threshold chosen on the validation split. This is
weaker than a DBN (no tempo continuity), so beat F-measures are lower bounds of MARBLE-style numbers.

The validation threshold search (:func:`threshold_scores`) finds each clip's local maxima once and scores every
threshold from them (a higher threshold keeps a subset of the same peaks), with the counting F-measure of
:func:`mert.probe.metrics.beat_scores`: the same numbers as decoding and running ``mir_eval`` per threshold.

:func:`grid_baseline` is the trivial reference every beat table prints next to the scores: an isochronous beat
grid at the median train tempo, which knows nothing about the test clip.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter1d

FPS = 75.0
THRESHOLDS = tuple(np.round(np.arange(0.1, 0.95, 0.1), 2))


def frame_targets(beats: np.ndarray, n_frames: int, fps: float = FPS, widen: float = 0.5) -> np.ndarray:
    """Frame labels: 1 at the frame nearest each beat, ``widen`` at its two neighbours (madmom-style widening).

    Args:
        beats: beat times in seconds.
        n_frames: frames of the clip's features.
        fps: frame rate.
        widen: label of the neighbouring frames.

    Returns:
        ``(n_frames,)`` float32 targets in [0, 1].
    """
    y = np.zeros(n_frames, np.float32)
    idx = np.round(np.asarray(beats) * fps).astype(int)
    idx = idx[(idx >= 0) & (idx < n_frames)]
    for d in (-1, 1):
        j = np.clip(idx + d, 0, n_frames - 1)
        y[j] = np.maximum(y[j], widen)
    y[idx] = 1.0
    return y


def peak_frames(act: np.ndarray, threshold: float, fps: float = FPS, min_interval: float = 0.2) -> np.ndarray:
    """Frame indices of the local maxima of ``act`` (``(T,)``) within +-``min_interval``/2 that reach ``threshold``."""
    size = max(1, int(round(min_interval * fps)) | 1)  # odd window
    return np.flatnonzero((act == maximum_filter1d(act, size, mode="constant")) & (act >= threshold))


def pick_peaks(act: np.ndarray, threshold: float, fps: float = FPS, min_interval: float = 0.2) -> np.ndarray:
    """Beat times (s) at local maxima of ``act`` (``(T,)``) within +-``min_interval``/2 that exceed ``threshold``."""
    return peak_frames(act, threshold, fps, min_interval) / fps


def decode(acts: list[np.ndarray], threshold: float, fps: float = FPS) -> list[np.ndarray]:
    """:func:`pick_peaks` of every clip's activation."""
    return [pick_peaks(a, threshold, fps) for a in acts]


def threshold_scores(acts: list[np.ndarray], reference: list[np.ndarray], thresholds, tolerance: float,
                     fps: float = FPS) -> np.ndarray:  # fmt: skip
    """Per-clip beat F-measure of :func:`decode` at every threshold.

    Args:
        acts: per clip, ``(T,)`` frame activations in [0, 1].
        reference: per clip, true beat times (s).
        thresholds: ``K`` candidate thresholds.
        tolerance: F-measure window (s).
        fps: frame rate of ``acts``.

    Returns:
        ``(K, n_clips)`` scores, equal to ``metrics.beat_scores(decode(acts, t), reference, tolerance)`` for each t.
    """
    from mert.probe.metrics import beat_matches, f_measure

    thresholds = np.asarray(thresholds, np.float64)
    counts = np.zeros((3, len(thresholds), len(acts)), np.int64)  # matches, estimates, references
    for i, (act, ref) in enumerate(zip(acts, reference)):
        frames = peak_frames(act, float(thresholds.min()), fps)  # every peak any threshold keeps
        times, values = frames / fps, act[frames]
        for k, t in enumerate(thresholds):
            est = times[values >= t]
            counts[:, k, i] = beat_matches(ref, est, tolerance), len(est), len(ref)
    return f_measure(*counts)


def grid_baseline(train: list[np.ndarray], durations: list[float]) -> tuple[list[np.ndarray], float, float]:
    """The trivial beat "tracker": an isochronous grid at the median train tempo, for clips of given lengths.

    The period is the median over train clips of each clip's median inter-beat interval; the grid starts at the
    median first-beat time of the train clips and runs to the end of each clip. It uses nothing of the test audio,
    so it is the floor a beat probe has to clear (the analogue of always answering the majority class).

    Args:
        train: per train clip, beat times (s).
        durations: seconds of each clip to annotate.

    Returns:
        ``(grids, bpm, start)``: per clip the grid's beat times, its tempo in BPM, its first beat (s).
    """
    ibis = [float(np.median(np.diff(b))) for b in train if len(b) > 1]
    if not ibis:
        raise ValueError("grid baseline: no train clip has two beats (no tempo to copy)")
    period = float(np.median(ibis))
    start = float(np.median([b[0] for b in train if len(b)])) % period
    return [np.arange(start, d, period) for d in durations], 60.0 / period, start
