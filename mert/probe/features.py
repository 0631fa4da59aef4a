"""Frozen-backbone feature extraction for probing, batched and cached on disk.

One forward pass per window gives every layer at once. Two modes:

* ``clip``: each clip is cut into windows of ``window`` seconds (the last, shorter window is kept if it is
  at least ``min_window`` seconds long, or if it is the only one); each window's hidden states are
  time-averaged, giving ``(n_windows, n_layers, D)`` per clip (MARBLE: probe per window, average
  predictions per clip).
* ``frame``: the whole clip at 75 Hz, ``(T, n_layers, D)``, for beat tracking and separation; equal-length
  clips are batched. Audio longer than the model's ``chunk_seconds`` is encoded in stride-aligned overlapping windows
  (:func:`mert.model.extract.encode_long`), stitched on the whole-clip frame grid.

The cache lives in ``cache_dir/<model hash>/<task hash>/``: ``features.npy`` (every clip's rows
concatenated on axis 0, float32 or float16) then ``index.json`` (keys, row offsets, skipped files), both
written atomically, the index last, so an index on disk always describes a complete array.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mert.audio import AudioError, load_audio
from mert.probe.models import SAMPLE_RATE, FeatureModel, MERTFeatures
from mert.probe.tasks import Example
from mert.utils.io import atomic_save_npy, atomic_write_json, sha256_json

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Extracted features of a task's examples.

    Attributes:
        rows: example key -> ``(n_windows, n_layers, D)`` (clip mode) or ``(T, n_layers, D)`` (frame mode).
        skipped: audio path -> reason, for files that could not be decoded.
        n_layers: number of layers.
        seconds: wall time of the extraction (0 when read from the cache).
        cached: whether the features came from the cache.
    """

    rows: dict[str, np.ndarray]
    skipped: dict[str, str] = field(default_factory=dict)
    n_layers: int = 0
    seconds: float = 0.0
    cached: bool = False


def cache_dir_for(
    root: Path, model: FeatureModel, examples: list[Example], mode: str, window: float, min_window: float
) -> Path:
    """``root/<model hash>/<hash of (examples, mode, windowing, layers)>``."""
    windowing = {"window": window, "min_window": min_window} if mode == "clip" else {}
    task = {"examples": sorted(e.key for e in examples), "mode": mode, "layers": "all"} | windowing
    return Path(root) / model.identity_hash / sha256_json(task)[:16]


def load_cached(directory: Path) -> Features | None:
    index = directory / "index.json"
    if not index.is_file() or not (directory / "features.npy").is_file():
        return None
    import json

    meta = json.loads(index.read_text())
    data = np.load(directory / "features.npy", mmap_mode="r")
    offsets = meta["offsets"]
    rows = {k: np.asarray(data[offsets[i] : offsets[i + 1]], np.float32) for i, k in enumerate(meta["keys"])}
    return Features(rows, meta["skipped"], meta["n_layers"], cached=True)


def save_cache(directory: Path, feats: Features, dtype: str, identity: dict[str, Any]) -> None:
    keys = list(feats.rows)
    lengths = [len(feats.rows[k]) for k in keys]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()
    data = np.concatenate([feats.rows[k] for k in keys]).astype(dtype) if keys else np.zeros((0,), dtype)
    atomic_save_npy(directory / "features.npy", data)
    meta = {"keys": keys, "offsets": offsets, "skipped": feats.skipped, "n_layers": feats.n_layers}
    atomic_write_json(directory / "index.json", meta | {"model": identity, "seconds": feats.seconds})


def windows(n_samples: int, window: float, min_window: float) -> list[tuple[int, int]]:
    """``[(start, length)]`` covering a clip with windows of ``window`` seconds."""
    size = max(1, int(round(window * SAMPLE_RATE)))
    out = [(s, min(size, n_samples - s)) for s in range(0, n_samples, size)]
    if len(out) > 1 and out[-1][1] < min_window * SAMPLE_RATE:
        out.pop()
    return out


def _load(example: Example, min_samples: int) -> np.ndarray:
    wav = load_audio(example.path, sample_rate=SAMPLE_RATE)
    start = int(round(example.start * SAMPLE_RATE))
    stop = None if example.duration is None else start + int(round(example.duration * SAMPLE_RATE))
    wav = wav[start:stop]
    if len(wav) < min_samples:
        raise AudioError(example.path, f"excerpt shorter than {min_samples / SAMPLE_RATE:.2f} s")
    return wav


class _Batcher:
    """Groups equal-length windows into batches of ``batch_size``; time-averages them (clip mode) or not."""

    def __init__(self, model: FeatureModel, batch_size: int, device: str, average: bool = True):
        self.model, self.batch_size, self.device, self.average = model, batch_size, device, average
        self.pending: dict[int, list[tuple[str, int, np.ndarray]]] = defaultdict(list)
        self.out: dict[str, dict[int, np.ndarray]] = defaultdict(dict)

    def add(self, key: str, index: int, wav: np.ndarray) -> None:
        bucket = self.pending[len(wav)]
        bucket.append((key, index, wav))
        if len(bucket) >= self.batch_size:
            self._run(len(wav))

    def _run(self, length: int) -> None:
        items = self.pending.pop(length, [])
        if not items:
            return
        wav = torch.from_numpy(np.stack([w for _, _, w in items])).to(self.device)  # (B, L)
        h = self.model(wav)  # (n_layers, B, T, D)
        h = (h.mean(2) if self.average else h.transpose(0, 2)).float().cpu().numpy()  # (n_layers|T, B, D|...)
        for b, (key, index, _) in enumerate(items):
            self.out[key][index] = h[:, b]  # (n_layers, D) averaged, or (T, n_layers, D) frames

    def finish(self) -> dict[str, np.ndarray]:
        for length in list(self.pending):
            self._run(length)
        if not self.average:  # one frame-level "window" per clip
            return {k: v[0] for k, v in self.out.items()}  # (T, n_layers, D)
        return {k: np.stack([v[i] for i in sorted(v)]) for k, v in self.out.items()}  # (n_windows, n_layers, D)


@torch.no_grad()
def encode_frames(model: FeatureModel, wav: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Whole-clip frame features ``(T, n_layers, D)``, chunked for MERT models on long audio."""
    x = torch.from_numpy(wav)[None].to(device)  # (1, L)
    if not isinstance(model, MERTFeatures) or len(wav) <= model.chunk_seconds * SAMPLE_RATE:
        return model(x)[:, 0].transpose(0, 1).float().cpu().numpy()  # (n_layers, T, D) -> (T, n_layers, D)
    from mert.model.extract import encode_long

    overlap = min(5.0, model.chunk_seconds / 4)
    h = encode_long(model.model, x[0], None, model.chunk_seconds, overlap)  # (n_layers, T, D)
    return h.transpose(0, 1).numpy()  # (T, n_layers, D)


def extract(
    model: FeatureModel,
    examples: list[Example],
    mode: str = "clip",
    window: float = 5.0,
    min_window: float = 1.0,
    batch_size: int = 8,
    cache_root: str | Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> Features:
    """Features of every example (one forward pass per window for all layers), from the cache when possible.

    Args:
        model: the frozen extractor.
        examples: the task's examples (all splits).
        mode: ``"clip"`` (windowed, time-averaged) or ``"frame"`` (75 Hz frames).
        window: clip-mode window length in seconds.
        min_window: a trailing window shorter than this is dropped (unless it is the clip's only one).
        batch_size: windows per forward pass.
        cache_root: cache directory (``None``: no cache).
        dtype: on-disk dtype (``float16`` halves frame-level caches).
        device: torch device for the forward passes.

    Returns:
        :class:`Features`; undecodable files are in ``skipped`` (logged with their reason), not in ``rows``.
    """
    directory = cache_dir_for(Path(cache_root), model, examples, mode, window, min_window) if cache_root else None
    if directory is not None and (hit := load_cached(directory)) is not None:
        log.info("features from cache %s (%d clips)", directory, len(hit.rows))
        return hit
    t0 = time.perf_counter()
    model = model.to(device).eval()
    skipped: dict[str, str] = {}
    batcher = _Batcher(model, batch_size, device, average=mode == "clip")
    rows: dict[str, np.ndarray] = {}
    for e in examples:
        try:
            wav = _load(e, min_samples=2 * 400)  # at least the conv receptive field, twice
        except AudioError as err:
            skipped[str(e.path)] = err.reason
            log.warning("skipping %s: %s", e.path, err.reason)
            continue
        if mode == "frame" and len(wav) > model.chunk_seconds * SAMPLE_RATE:
            rows[e.key] = encode_frames(model, wav, device)  # long audio: chunked, one clip at a time
        elif mode == "frame":
            batcher.add(e.key, 0, wav)  # equal-length clips share a forward pass
        else:
            for i, (s, n) in enumerate(windows(len(wav), window, min_window)):
                batcher.add(e.key, i, wav[s : s + n])
    rows |= batcher.finish()
    feats = Features(rows, skipped, model.n_layers, time.perf_counter() - t0)
    if directory is not None:
        save_cache(directory, feats, dtype, model.identity)
    return feats
