"""HuBERT-style teacher iteration: k-means codes of a trained encoder's hidden state (``label.teacher: hidden``).

HuBERT (Hsu et al. 2021) trains its first iteration on k-means codes of MFCC frames, then re-labels the corpus
with k-means codes of the first model's hidden states and trains again (base: 500 clusters of layer 6 of 12).
fairseq's ``examples/hubert/simple_kmeans`` does it in three steps, which this teacher follows:

1. ``dump_hubert_feature.py``: hidden state ``layer`` of the parent for every utterance
   (``extract_features(output_layer=layer)``: the transformer stops after that layer; our
   ``MERT(..., output_layer=layer)``, the same as ``hidden_states[layer]`` of the full pass);
2. ``learn_kmeans.py --percent 0.1``: ``MiniBatchKMeans`` (k-means++, batch 10000, ``n_init`` 20, ``max_iter`` 100,
   ``max_no_improvement`` 100, ``tol`` 0, ``reassignment_ratio`` 0) on the features of a random 10% of the
   utterances, unstandardised (:class:`mert.teachers.config.HiddenParams`);
3. ``dump_km_label.py``: each frame's nearest centroid, ``argmin |x|^2 - 2 x.c + |c|^2``
   (:func:`mert.teachers.kmeans.nearest_centroid`).

**Frames.** The parent must have the student's conv front end arithmetic (24 kHz, total stride 320, receptive
field 400): its frame ``i`` covers samples ``[320 i, 320 i + 400)``, exactly student frame ``i``
(:mod:`mert.teachers.base`), so the codes are at 75 Hz with ``student_frames(L)`` frames per clip, no resampling
(fairseq's ``label_rate`` = the feature rate). Any other front end is refused.

**Windows and the whole-clip GroupNorm.** Layer 0's GroupNorm normalises each channel over the *whole input* (and
``do_normalize`` standardises the whole input waveform), so an encoder's features of a frame depend on every
sample of the input, not on a receptive field: no amount of context makes a window's features equal the whole
clip's. Hence a clip of up to ``label.chunk_seconds`` (30 s, MARBLE's window) is encoded **whole**, alone and
unpadded (each row of a batch on its own: a clip's codes never depend on the other clips of its batch, nor on how
the corpus is split across ranks; padding or another batch size changes the states by ~1e-6, enough to flip a
frame that sits on a cluster boundary). A longer clip is encoded in windows
of about ``chunk_seconds`` of kept frames plus ``context_seconds`` of attention context on each side (the
label run's :func:`mert.teachers.label_run.plan_windows`); each window gets its own GroupNorm and normalisation
statistics, as in ``mert extract`` (1.1-1.3% relative L2 per frame on a 60 s clip, README "The model") and as
in fairseq, which cuts utterances into ``max_chunk`` = 100 s pieces without overlap. The training crops (2-5 s)
see crop statistics anyway: the codes are a function of the clip (or its window), as every teacher's.

**Versioning.** The label identity's config holds the parent's weights SHA-256 (over its state dict: the same
for the same weights in any file format or location), its encoder config (``do_normalize`` included), the
layer, the k-means model's hash (which covers its fit settings and centroids) and the windowing; labels of
another parent, layer or fit never share a store. Where the parent came from (the spec as given, the directory
it resolved to, its files' hashes, the registry version, the parent's own teacher and iteration) is recorded
beside it, in ``teacher.json``'s ``lineage`` (not hashed: the same weights from another path are the same labels;
:mod:`mert.teachers.parent`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from mert.data.shards import Corpus, CorpusError
from mert.teachers.base import HOP, WINDOW, TargetExtractor, TeacherError, student_frames
from mert.teachers.kmeans import KMeansModel, fit_centroids, nearest_centroid
from mert.teachers.parent import SAMPLE_RATE, ParentModel, encoder_config

log = logging.getLogger(__name__)

FEATURE = "hidden"
"""The teacher's name and the ``features`` entry of a hidden-state k-means model (``kmeans.json``)."""


class HiddenFeatures(nn.Module):
    """Hidden state ``layer`` of a frozen parent encoder on the student's frames: (B, S) -> (B, F, D).

    Args:
        parent: the parent encoder.
        layer: the hidden-state index (0..N, see :func:`resolve_layer`).
    """

    def __init__(self, parent: ParentModel, layer: int):
        super().__init__()
        self.parent, self.layer = parent, layer
        self.encoder = parent.model.eval().requires_grad_(False)
        self.dim = parent.model.config.hidden_size

    @torch.inference_mode()
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Each row encoded alone, at its own length (no padding, no batch: GEMM kernels chosen for another batch
        size round differently, ~2e-6 here, which can flip a frame's nearest centroid; one row at a time, a clip's
        codes do not depend on its batch, so any split of the corpus writes the same store).

        Args:
            wav: (B, S) float32 at 24 kHz, right-zero-padded.
            lengths: (B,) valid samples per row (each >= 400).

        Returns:
            (B, F, D) float32, ``F = student_frames(S)``; row ``b``'s frames past ``student_frames(lengths[b])``
            are zero.
        """
        out = wav.new_zeros(wav.shape[0], student_frames(wav.shape[1]), self.dim)  # (B, F, D)
        for b, n in enumerate(lengths.tolist()):
            h = self.encoder(wav[b : b + 1, :n], output_layer=self.layer).last_hidden_state  # (1, T, D)
            out[b, : h.shape[1]] = h[0].float()
        return out


class HiddenTeacher(TargetExtractor):
    """One codebook: the nearest of ``k`` centroids to the parent's hidden state ``layer``, per student frame.

    Args:
        features: the parent's hidden-state extractor.
        kmeans: the fitted centroids (a :class:`KMeansModel` with ``features: [hidden]``).
        chunk_frames: kept frames per window of a clip longer than ``label.chunk_seconds``.
        context_frames: attention context on each side of such a window.
        kmeans_source: where ``kmeans`` was loaded from (named in errors).

    Raises:
        TeacherError: ``kmeans`` was fitted on another parent or layer.
    """

    name = FEATURE

    def __init__(self, features: HiddenFeatures, kmeans: KMeansModel, chunk_frames: int = 2250,
                 context_frames: int = 188, kmeans_source: str = "(in memory)"):  # fmt: skip
        super().__init__()
        check_kmeans(kmeans, settings_of(features), kmeans_source)
        self.features, self.kmeans = features, kmeans
        self.n_codebooks, self.codebook_size = 1, int(kmeans.settings["n_clusters"][0])
        self.chunk_frames = chunk_frames
        self.left_context_frames = self.right_context_frames = context_frames
        self.register_buffer("centroids", torch.from_numpy(kmeans.centroids[0]).float())  # (k, D)
        self.freeze()

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, 1, F) cluster ids, F = ``student_frames(S)``."""
        return nearest_centroid(self.features(wav, lengths), self.centroids)[:, None]  # (B, 1, F)

    def config(self) -> dict[str, Any]:
        parent = self.features.parent
        return {
            "model": "hubert-kmeans",
            "parent_weights_sha256": parent.weights_sha256,
            "parent_config": encoder_config(parent.model.config),
            "layer": self.features.layer,
            "n_codebooks": 1,
            "n_clusters": [self.codebook_size],
            "codebook_size": self.codebook_size,
            "kmeans_hash": self.kmeans.hash,
            "sample_rate": SAMPLE_RATE,
            "chunk_frames": self.chunk_frames,
            "context_frames": self.left_context_frames,
        }

    def weights_sha256(self) -> str:
        """The k-means model's hash (its settings name the parent's weights and layer; its arrays the centroids)."""
        return self.kmeans.hash

    def lineage(self) -> dict[str, Any]:
        """Where the labels come from (not hashed): the parent, the layer, the k-means fit, the HuBERT iteration."""
        parent_it = self.features.parent.iteration
        return {
            "parent": self.features.parent.record,
            "layer": self.features.layer,
            "n_clusters": self.codebook_size,
            "kmeans_hash": self.kmeans.hash,
            "kmeans_fit": dict(self.kmeans.fit_info),
            "iteration": None if parent_it is None else parent_it + 1,
        }

    def identity(self) -> dict[str, Any]:
        """The base identity (``name``, ``config``, ``weights_sha256``, ``format``, ``hash``) + ``lineage``."""
        return {**super().identity(), "lineage": self.lineage()}


def settings_of(features: HiddenFeatures) -> dict[str, Any]:
    """What a hidden-state k-means model must have been fitted on: the parent's weights and config, the layer."""
    p = features.parent
    return {"parent_weights_sha256": p.weights_sha256, "parent_config": encoder_config(p.model.config),
            "layer": features.layer}  # fmt: skip


def check_kmeans(model: KMeansModel, want: dict[str, Any], where: str) -> None:
    """Raise :class:`TeacherError` unless ``model`` is a hidden-state k-means of the parent and layer in ``want``."""
    st = model.settings
    if st.get("features") != [FEATURE]:
        raise TeacherError(f"k-means model {where}: fitted on {st.get('features')}, not on hidden states")
    bad = [k for k, v in want.items() if st.get(k) != v]
    if bad:
        have = {k: st.get(k) if k != "parent_config" else "..." for k in bad}
        need = {k: want[k] if k != "parent_config" else "..." for k in bad}
        raise TeacherError(f"k-means model {where} was fitted on another parent or layer: {bad} differ "
                           f"(model: {have}; asked for: {need})")  # fmt: skip


def kmeans_settings(features: HiddenFeatures, params, chunk_frames: int, context_frames: int) -> dict[str, Any]:
    """The settings of the hidden-state k-means fit (``kmeans.json``; all of them enter its hash).

    Args:
        features: the parent's hidden-state extractor.
        params: ``label.hidden`` (:class:`mert.teachers.config.HiddenParams`).
        chunk_frames: kept frames per window (``label.chunk_seconds``).
        context_frames: context frames on each side of a window of a long clip.
    """
    return {
        "features": [FEATURE],
        "n_clusters": [params.n_clusters],
        **settings_of(features),
        "sample_rate": SAMPLE_RATE,
        "seed": params.seed,
        "fit_fraction": params.fit_fraction,
        "fit_frames": params.fit_frames,
        "chunk_frames": chunk_frames,
        "context_frames": context_frames,
        "kmeans": params.kmeans_options(),
        "standardize": False,  # fairseq clusters the raw hidden states
    }


def context_frames(seconds: float) -> int:
    """Context frames of ``seconds`` at 75 Hz."""
    return round(seconds * SAMPLE_RATE / HOP)


# ---------------------------------------------------------------------------------------------- fit
def fit_sample(
    corpus: Corpus,
    features: HiddenFeatures,
    settings: dict[str, Any],
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The frames the k-means is fitted on: hidden states of a seeded random share of the corpus's windows.

    fairseq's ``learn_kmeans.py --percent p`` draws ``ceil(p x utterances)`` utterances without replacement; here
    the units are the labelling windows (whole clips up to ``chunk_frames``, the windows of longer clips), drawn
    with ``numpy.random.default_rng(seed)`` and taken in corpus order, with the same windowing as the labels, so
    every fit frame is the feature its label will be computed from. Then at most ``fit_frames`` of their frames
    (drawn with the same generator, kept in order).

    Args:
        corpus: the corpus (unreadable windows are skipped with a warning).
        features: the parent's hidden-state extractor (moved to ``device``).
        settings: :func:`kmeans_settings`.
        batch_size: windows per forward pass.
        device: where the parent runs.
        progress: a progress bar.

    Returns:
        ``(x (N, D) float32, info)``; ``info``: windows in the corpus and drawn, clips, frames computed and kept.
    """
    from tqdm import tqdm

    from mert.teachers.label_run import _batches, plan_windows

    rng = np.random.default_rng(settings["seed"])
    clips = [c for c in corpus.clips if c.length >= WINDOW]
    chunk, ctx = settings["chunk_frames"], settings["context_frames"]
    windows = [w for i, c in enumerate(clips) for w in plan_windows(i, c.length, chunk, ctx, ctx)]
    if not windows:
        raise TeacherError(f"hidden k-means fit: no clip of {corpus.root} is long enough for one frame")
    n = min(len(windows), math.ceil(len(windows) * settings["fit_fraction"]))
    drawn = [windows[i] for i in np.sort(rng.choice(len(windows), n, replace=False))]
    features.to(device)
    parts: dict[int, np.ndarray] = {}
    order = sorted(range(len(drawn)), key=lambda j: -drawn[j].length)  # similar lengths per batch
    index = {id(drawn[j]): j for j in order}
    with tqdm(total=len(drawn), unit="window", desc="hidden k-means sample", disable=not progress) as bar:
        for ev in _batches(corpus, clips, [drawn[j] for j in order], batch_size, pin=False):
            if ev[0] == "reject":
                log.warning("hidden k-means fit: skipping clip %s: %s", clips[ev[1]].id, ev[2])
                continue
            _, group, wav, lengths = ev
            h = features(wav.to(device), lengths.to(device)).cpu().numpy()  # (b, F, D)
            for w, x in zip(group, h):
                parts[index[id(w)]] = x[w.keep : w.keep + w.count]
            bar.update(len(group))
    if not parts:
        raise CorpusError(f"hidden k-means fit: no readable audio among the {n} windows drawn from {corpus.root}")
    x = np.concatenate([parts[j] for j in sorted(parts)])  # (N, D), corpus order
    computed = x.shape[0]
    if computed > settings["fit_frames"]:
        x = x[np.sort(rng.choice(computed, settings["fit_frames"], replace=False))]
    info = {"windows": len(windows), "windows_drawn": n, "windows_read": len(parts),
            "clips": len({drawn[j].clip for j in parts}), "frames_computed": computed,
            "frames": int(x.shape[0])}  # fmt: skip
    return np.ascontiguousarray(x, dtype=np.float32), info


def fit_hidden_kmeans(corpus: Corpus, features: HiddenFeatures, settings: dict[str, Any], batch_size: int = 8,
                      device: torch.device | str = "cpu", progress: bool = False,
                      threads: int | None = None) -> KMeansModel:  # fmt: skip
    """Fit the hidden-state k-means (fairseq ``learn_kmeans.py``) on :func:`fit_sample`'s frames.

    ``threads``: BLAS / OpenMP threads of the k-means (:func:`mert.teachers.kmeans.fit_centroids`).

    Returns:
        The :class:`KMeansModel` (centroids (k, D); identity standardisation: mean 0, std 1, as fairseq clusters the
        raw states); ``fit_info`` holds the sample's counts, the inertia per frame and the wall times.

    Raises:
        TeacherError: fewer frames than clusters (raise ``fit_fraction`` or lower ``n_clusters``).
    """
    t0 = time.perf_counter()
    x, info = fit_sample(corpus, features, settings, batch_size, device, progress)
    t1 = time.perf_counter()
    k = settings["n_clusters"][0]
    if x.shape[0] < k:
        raise TeacherError(
            f"hidden k-means fit: {x.shape[0]} frames drawn ({info['windows_drawn']} of {info['windows']} windows, "
            f"fit_fraction {settings['fit_fraction']}) < {k} clusters: raise label.hidden.fit_fraction or lower "
            "label.hidden.n_clusters"
        )
    log.info("hidden k-means: %d clusters on %d frames of layer %d (%d windows)", k, x.shape[0], settings["layer"],
             info["windows_read"])  # fmt: skip
    centroids, inertia = fit_centroids(x, k, settings["seed"], inertia=True, threads=threads, **settings["kmeans"])
    dim = x.shape[1]
    info.update(inertia=inertia, features_seconds=round(t1 - t0, 3), kmeans_seconds=round(time.perf_counter() - t1, 3))
    return KMeansModel(dict(settings), [centroids], [np.zeros(dim, np.float32)], [np.ones(dim, np.float32)], info)
