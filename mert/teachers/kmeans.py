"""Baseline teacher (MERT-v0 / HuBERT iteration 1): frame features -> k-means cluster ids at 75 Hz.

HuBERT (Hsu et al. 2021) clusters 39-dim MFCC frames with k-means; MERT-v0 (Li et al. 2023,
MARBLE) used k-means labels on log-mel and chroma features. Each entry of ``features`` gives one
codebook: features (see :mod:`mert.teachers.features`) are standardised with the fit sample's
mean/std and assigned to the nearest centroid of a scikit-learn ``MiniBatchKMeans`` (seeded).

A fitted model is a directory of plain ``.npy`` arrays plus ``kmeans.json`` (no pickle)::

    kmeans.json                  features, n_clusters, feature settings, fit info, hash
    centroids-0.npy mean-0.npy std-0.npy     codebook 0: (k, D), (D,), (D,) float32
    ...

``hash`` (SHA-256 over the settings and the arrays' bytes) versions the model and enters the
teacher identity, so labels from another fit never share a cache key.

The same format, fit (:func:`fit_centroids`) and assignment (:func:`nearest_centroid`) serve the hidden-state
teacher of HuBERT's later iterations (:mod:`mert.teachers.hidden`; ``features: [hidden]``, identity
standardisation as fairseq's ``simple_kmeans``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mert.data.shards import Clip, Corpus
from mert.teachers.base import TargetExtractor, TeacherError, student_frames
from mert.teachers.features import DELTA_CONTEXT, feature_dim, frame_features
from mert.utils.io import atomic_save_npy, atomic_write_json, sha256_json

log = logging.getLogger(__name__)
MODEL_FILE = "kmeans.json"


@dataclass
class KMeansModel:
    """Fitted k-means codebooks: per feature ``centroids`` (k, D), ``mean`` (D,), ``std`` (D,)."""

    settings: dict[str, Any]  # features, n_clusters, n_mels, n_mfcc, sample_rate, seed
    centroids: list[np.ndarray]
    mean: list[np.ndarray]
    std: list[np.ndarray]
    fit_info: dict[str, Any]

    @property
    def hash(self) -> str:
        h = hashlib.sha256(sha256_json(self.settings).encode())
        for arrays in (self.centroids, self.mean, self.std):
            for a in arrays:
                h.update(np.ascontiguousarray(a, np.float32).tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the arrays, then ``kmeans.json`` last (its presence marks a complete model)."""
        path = Path(path)
        for i in range(len(self.centroids)):
            atomic_save_npy(path / f"centroids-{i}.npy", self.centroids[i].astype(np.float32))
            atomic_save_npy(path / f"mean-{i}.npy", self.mean[i].astype(np.float32))
            atomic_save_npy(path / f"std-{i}.npy", self.std[i].astype(np.float32))
        atomic_write_json(path / MODEL_FILE, {"settings": self.settings, "fit": self.fit_info, "hash": self.hash})
        return path

    @classmethod
    def load(cls, path: str | Path) -> KMeansModel:
        """Load a saved model; raises :class:`TeacherError` if it is incomplete or its hash does not match."""
        path = Path(path)
        if not (path / MODEL_FILE).exists():
            raise TeacherError(f"{path} is not a fitted k-means model (no {MODEL_FILE})")
        meta = json.loads((path / MODEL_FILE).read_text())
        n = len(meta["settings"]["features"])

        def arrays(kind: str) -> list[np.ndarray]:
            return [np.load(path / f"{kind}-{i}.npy", allow_pickle=False) for i in range(n)]

        model = cls(meta["settings"], arrays("centroids"), arrays("mean"), arrays("std"), meta["fit"])
        if model.hash != meta["hash"]:
            raise TeacherError(f"k-means model {path}: arrays do not match the recorded hash (modified or corrupt)")
        return model


class KMeansTeacher(TargetExtractor):
    """Cluster ids of frame features, one codebook per feature: ``encode(wav) -> (B, K, F)``."""

    def __init__(self, model: KMeansModel, chunk_frames: int = 2250):
        super().__init__()
        st = model.settings
        self.model, self.features = model, list(st["features"])
        self.n_mels, self.n_mfcc, self.sample_rate = st["n_mels"], st["n_mfcc"], st["sample_rate"]
        self.n_codebooks, self.codebook_size = len(self.features), max(st["n_clusters"])
        self.name = "kmeans-" + "+".join(self.features)
        self.chunk_frames = chunk_frames
        self.left_context_frames = self.right_context_frames = DELTA_CONTEXT if "mfcc" in self.features else 0
        for i in range(self.n_codebooks):
            self.register_buffer(f"centroids_{i}", torch.from_numpy(model.centroids[i]).float())
            self.register_buffer(f"mean_{i}", torch.from_numpy(model.mean[i]).float())
            self.register_buffer(f"std_{i}", torch.from_numpy(model.std[i]).float())
        self.freeze()

    def features_of(self, wav: torch.Tensor, lengths: torch.Tensor, i: int) -> torch.Tensor:
        """Standardised features of codebook ``i``: (B, S) -> (B, F, D)."""
        x = frame_features(wav, lengths, self.features[i], self.sample_rate, self.n_mels, self.n_mfcc)
        return (x - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = [nearest_centroid(self.features_of(wav, lengths, i), getattr(self, f"centroids_{i}"))
               for i in range(self.n_codebooks)]  # fmt: skip
        return torch.stack(out, dim=1)  # (B, K, F)

    def config(self) -> dict[str, Any]:
        return {**self.model.settings, "model_hash": self.model.hash, "n_codebooks": self.n_codebooks}

    def weights_sha256(self) -> str:
        return self.model.hash


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) of every frame, as fairseq's ``dump_km_label.py``.

    ``|x - c|^2 = |x|^2 - 2 x.c + |c|^2`` (``ApplyKmeans``), one matmul.

    Args:
        x: (..., D) frames.
        centroids: (k, D).

    Returns:
        (...) int64 in ``[0, k)``.
    """
    d = x.pow(2).sum(-1, keepdim=True) - 2 * x @ centroids.T + centroids.pow(2).sum(-1)  # (..., k)
    return d.argmin(-1)


def fit_centroids(
    x: np.ndarray, n_clusters: int, seed: int, *, inertia: bool = False, threads: int | None = None, **options: Any
) -> tuple[np.ndarray, float | None]:
    """Fit scikit-learn's ``MiniBatchKMeans`` (seeded) on frames ``x``.

    Args:
        x: (N, D) float32 frames (already standardised if the teacher standardises).
        n_clusters: k.
        seed: ``random_state`` (the initialisation and the mini-batches).
        inertia: also return the mean squared distance of the frames to their centroid (fairseq's
            ``learn_kmeans.py`` logs ``-km.score(feat) / len(feat)``).
        threads: BLAS / OpenMP threads of the fit (``threadpoolctl``; None: the libraries' default, every core).
            On the shared 2-core machine one k-means++ initialisation (30000 x 64 frames, 500 clusters) took 112 s
            with OpenBLAS's 2 threads and 9.4 s with 1 (busy-waiting threads on an oversubscribed CPU).
        **options: ``MiniBatchKMeans`` arguments (``batch_size``, ``n_init``, ``max_iter``, ``max_no_improvement``,
            ``tol``, ``reassignment_ratio``, ``init``); scikit-learn's defaults otherwise.

    Returns:
        ``(centroids (k, D) float32, inertia per frame or None)``.

    Raises:
        TeacherError: fewer frames than clusters.
    """
    from sklearn.cluster import MiniBatchKMeans

    if x.shape[0] < n_clusters:
        raise TeacherError(f"k-means fit: {x.shape[0]} frames < {n_clusters} clusters")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        km = MiniBatchKMeans(n_clusters, random_state=seed, **options).fit(x)
        per_frame = float(-km.score(x) / x.shape[0]) if inertia else None
    return km.cluster_centers_.astype(np.float32), per_frame


def fit_windows(corpus: Corpus, clips: list[Clip], budget: int) -> list[tuple[Clip, int, int]]:
    """Up to ``budget`` frames' worth of evenly spread 30 s windows ``(clip, start, length)`` from ``clips``."""
    total = sum(student_frames(c.length) for c in clips)
    keep = min(1.0, budget / max(total, 1))
    out, acc = [], 0.0
    span = 2250 * 320
    for c in clips:
        for s in range(0, c.length, span):
            acc += keep * student_frames(min(span, c.length - s))
            if acc >= 1.0 and student_frames(min(span, c.length - s)) > 0:
                n = min(c.length - s, max(400, int(acc) * 320 + 80))
                out.append((c, s, n))
                acc -= student_frames(n)
    return out


def fit_kmeans(corpus: Corpus, settings: dict[str, Any], fit_frames: int = 200_000) -> KMeansModel:
    """Fit one ``MiniBatchKMeans`` per feature on up to ``fit_frames`` frames spread over the corpus.

    Args:
        corpus: the ingested corpus (unreadable clips are skipped).
        settings: ``features``, ``n_clusters``, ``n_mels``, ``n_mfcc``, ``sample_rate``, ``seed``.
        fit_frames: frame budget of the fit sample.
    """
    probe = KMeansTeacher(_empty_model(settings))
    feats: list[list[np.ndarray]] = [[] for _ in settings["features"]]
    for clip, start, n in fit_windows(corpus, corpus.clips, fit_frames):
        try:
            x = torch.from_numpy(corpus.audio(clip, start, n))[None]
        except Exception as e:  # noqa: BLE001 - a bad shard must not stop the fit
            log.warning("k-means fit: skipping clip %s: %s", clip.id, e)
            continue
        for i in range(len(feats)):
            feats[i].append(probe.features_of(x, torch.tensor([n]), i)[0].numpy())  # (F, D)
    if not feats[0]:
        raise TeacherError("k-means fit: no readable audio in the corpus")
    model = _empty_model(settings)
    for i, k in enumerate(settings["n_clusters"]):
        x = np.concatenate(feats[i])  # (N, D)
        mean, std = x.mean(0), x.std(0) + 1e-5
        centroids, _ = fit_centroids((x - mean) / std, k, settings["seed"], batch_size=4096, n_init=3, max_iter=100)
        model.centroids[i], model.mean[i], model.std[i] = centroids, mean, std
    model.fit_info = {"frames": int(x.shape[0]), "clips": len(corpus.clips)}
    return model


def _empty_model(st: dict[str, Any]) -> KMeansModel:
    """Identity standardisation, placeholder centroids: used to extract the raw fit features."""
    dims = [feature_dim(f, st["n_mels"], st["n_mfcc"]) for f in st["features"]]
    return KMeansModel(
        dict(st),
        [np.zeros((k, d), np.float32) for k, d in zip(st["n_clusters"], dims)],
        [np.zeros(d, np.float32) for d in dims],
        [np.ones(d, np.float32) for d in dims],
        {},
    )
