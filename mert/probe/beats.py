"""Beat tracking by frame-wise classification: targets at 75 Hz and a simple peak picker.

MARBLE decodes the frame activations with madmom's DBN beat tracker; madmom does not install here
(its wheels need an old Cython/numpy toolchain), so beats are decoded by peak picking instead: local maxima
of the activation over +-``min_interval``/2, above a threshold chosen on the validation split. This is
weaker than a DBN (no tempo continuity), so beat F-measures are lower bounds of MARBLE-style numbers.
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


def pick_peaks(act: np.ndarray, threshold: float, fps: float = FPS, min_interval: float = 0.2) -> np.ndarray:
    """Beat times (s) at local maxima of ``act`` (``(T,)``) within +-``min_interval``/2 that exceed ``threshold``."""
    size = max(1, int(round(min_interval * fps)) | 1)  # odd window
    peaks = np.flatnonzero((act == maximum_filter1d(act, size, mode="constant")) & (act >= threshold))
    return peaks / fps


def decode(acts: list[np.ndarray], threshold: float, fps: float = FPS) -> list[np.ndarray]:
    return [pick_peaks(a, threshold, fps) for a in acts]
