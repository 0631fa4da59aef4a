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

**The whole-clip GroupNorm, and long clips.** Layer 0's GroupNorm normalises each channel over the *whole input*
(and ``do_normalize`` standardises the whole waveform), so a frame's conv features depend on every sample of the
input, not on a receptive field: no context makes a window of *audio* give the whole clip's conv features (as
``mert extract`` and fairseq's ``max_chunk`` windows do). So the teacher encodes **whole clips** up to the
transformer (:func:`mert.model.extract.hidden_state_in_windows`): the normalisation, the GroupNorm statistics and
the conv features are the whole-clip pass's exactly (the conv stack streams in bounded memory), and so is hidden
state 0 of a kept frame (the positional conv's half width, 16 frames for ``mert-small``, 64 for 95M, is within the
context); only the transformer runs in windows of ``label.chunk_seconds`` (30 s) of kept frames plus
``context_seconds`` (2.5 s) of context on each side, which bounds attention's memory (O(window^2)). A clip of up
to 30 s is one window: exactly ``hidden_states[layer]`` of the whole clip. What attention sees still matters:
with a ``mert-small`` parent trained on 2 s crops (300 steps), the demo clips just over 30 s (8 of 48) keep 65%
of their whole-clip codes in 30 s windows with 2.5 s of context (layer-1 states 9% relative L2 off the whole
clip's, 7% with 8 s of context); windows of audio, each with its own GroupNorm statistics, kept 62%.
``label.chunk_seconds`` sets the window (e.g. the parent's training crop, for codes of in-distribution contexts).

**One clip at a time.** Each clip is encoded alone and unpadded (a padded batch, or another batch size, i.e. other
GEMM kernels, changes the states by ~2e-6: enough to flip a frame that sits on a cluster boundary), so a clip's codes
do not depend on its batch, nor on how the corpus is split across ranks. The label run therefore hands this teacher
whole clips (``chunk_frames`` is unbounded); batches only group the reading.

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
from mert.model.extract import hidden_state_in_windows
from mert.teachers.base import HOP, WINDOW, TargetExtractor, TeacherError, student_frames
from mert.teachers.kmeans import KMeansModel, fit_centroids, nearest_centroid
from mert.teachers.parent import SAMPLE_RATE, ParentModel, encoder_config

log = logging.getLogger(__name__)

FEATURE = "hidden"
"""The teacher's name and the ``features`` entry of a hidden-state k-means model (``kmeans.json``)."""
WHOLE_CLIP = 2**40
"""``chunk_frames`` of the teacher: the label run never cuts a clip (the teacher windows the transformer itself)."""


class HiddenFeatures(nn.Module):
    """Hidden state ``layer`` of a frozen parent encoder on the student's frames: (B, S) -> (B, F, D).

    Args:
        parent: the parent encoder.
        layer: the hidden-state index (0..N, see :func:`mert.teachers.parent.resolve_layer`).
        window_frames: kept frames per transformer window of a long clip (``label.chunk_seconds`` at 75 Hz).
        context_frames: frames of context on each side of such a window (``label.hidden.context_seconds``).
    """

    def __init__(self, parent: ParentModel, layer: int, window_frames: int = 2250, context_frames: int = 188):
        super().__init__()
        self.parent, self.layer = parent, layer
        self.window_frames, self.context_frames = window_frames, context_frames
        self.encoder = parent.model.eval().requires_grad_(False)
        self.dim = parent.model.config.hidden_size

    @torch.inference_mode()
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Each row encoded alone, at its own length (see the module docstring: "One clip at a time").

        Args:
            wav: (B, S) float32 at 24 kHz, right-zero-padded; each row a whole clip.
            lengths: (B,) valid samples per row (each >= 400).

        Returns:
            (B, F, D) float32, ``F = student_frames(S)``; row ``b``'s frames past ``student_frames(lengths[b])``
            are zero.
        """
        out = wav.new_zeros(wav.shape[0], student_frames(wav.shape[1]), self.dim)  # (B, F, D)
        for b, n in enumerate(lengths.tolist()):
            h = self.clip(wav[b, :n])  # (T, D)
            out[b, : h.shape[0]] = h
        return out

    def clip(self, wav: torch.Tensor) -> torch.Tensor:
        """One whole clip (L,) -> (T, D) float32, ``T = student_frames(L)``."""
        h = hidden_state_in_windows(self.encoder, wav, self.layer, self.window_frames, self.context_frames)
        return h.float()

    def settings(self) -> dict[str, Any]:
        """What these features are: the parent's weights and config, the layer, the transformer windows."""
        p = self.parent
        return {"parent_weights_sha256": p.weights_sha256, "parent_config": encoder_config(p.model.config),
                "layer": self.layer, "window_frames": self.window_frames,
                "context_frames": self.context_frames}  # fmt: skip


class HiddenTeacher(TargetExtractor):
    """One codebook: the nearest of ``k`` centroids to the parent's hidden state ``layer``, per student frame.

    The label run gives it whole clips (``chunk_frames`` unbounded, every sample of the clip): it windows the
    transformer itself (:class:`HiddenFeatures`).

    Args:
        features: the parent's hidden-state extractor.
        kmeans: the fitted centroids (a :class:`KMeansModel` with ``features: [hidden]``).
        kmeans_source: where ``kmeans`` was loaded from (named in errors).

    Raises:
        TeacherError: ``kmeans`` was fitted on another parent or layer.
    """

    name = FEATURE
    chunk_frames = WHOLE_CLIP
    right_context_frames = 1
    """So that the label run hands over the clip's last samples too (up to 319 past its last frame's window): the
    whole-clip normalisation and GroupNorm read them."""

    def __init__(self, features: HiddenFeatures, kmeans: KMeansModel, kmeans_source: str = "(in memory)"):
        super().__init__()
        check_kmeans(kmeans, settings_of(features), kmeans_source)
        self.features, self.kmeans = features, kmeans
        self.n_codebooks, self.codebook_size = 1, int(kmeans.settings["n_clusters"][0])
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
            "window_frames": self.features.window_frames,
            "context_frames": self.features.context_frames,
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
    return {k: v for k, v in features.settings().items() if k in ("parent_weights_sha256", "parent_config", "layer")}


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


def kmeans_settings(features: HiddenFeatures, params) -> dict[str, Any]:
    """The settings of the hidden-state k-means fit (``kmeans.json``; all of them enter its hash).

    Args:
        features: the parent's hidden-state extractor (parent, layer, windows).
        params: ``label.hidden`` (:class:`mert.teachers.config.HiddenParams`).
    """
    return {
        "features": [FEATURE],
        "n_clusters": [params.n_clusters],
        **features.settings(),
        "sample_rate": SAMPLE_RATE,
        "seed": params.seed,
        "fit_fraction": params.fit_fraction,
        "fit_frames": params.fit_frames,
        "kmeans": params.kmeans_options(),
        "standardize": False,  # fairseq clusters the raw hidden states
    }


def context_frames(seconds: float) -> int:
    """Context frames of ``seconds`` at 75 Hz."""
    return round(seconds * SAMPLE_RATE / HOP)


# ---------------------------------------------------------------------------------------------- fit
def fit_sample(corpus: Corpus, features: HiddenFeatures, settings: dict[str, Any], device: torch.device | str = "cpu",
               progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """The frames the k-means is fitted on: hidden states of a seeded random share of the corpus's clips.

    fairseq's ``learn_kmeans.py --percent p`` draws ``ceil(p x utterances)`` utterances without replacement
    (``np.random.choice``); here ``ceil(fit_fraction x clips)`` clips are drawn with
    ``numpy.random.default_rng(seed)`` and encoded (in corpus order) exactly as for their labels, so every fit frame
    is the feature its label is computed from. Of their frames at most ``fit_frames`` are kept, drawn with the same
    generator before any is computed (kept in order), so memory holds at most (fit_frames, D) float32.

    Args:
        corpus: the corpus (unreadable clips are skipped with a warning).
        features: the parent's hidden-state extractor (moved to ``device``).
        settings: :func:`kmeans_settings`.
        device: where the parent runs.
        progress: a progress bar.

    Returns:
        ``(x (N, D) float32, info)``; ``info``: clips in the corpus, drawn and read, frames of the drawn clips and kept.
    """
    from tqdm import tqdm

    rng = np.random.default_rng(settings["seed"])
    clips = [c for c in corpus.clips if c.length >= WINDOW]
    if not clips:
        raise TeacherError(f"hidden k-means fit: no clip of {corpus.root} is long enough for one frame")
    n = min(len(clips), math.ceil(len(clips) * settings["fit_fraction"]))
    drawn = [clips[i] for i in np.sort(rng.choice(len(clips), n, replace=False))]
    frames = np.array([student_frames(c.length) for c in drawn])
    starts = np.concatenate([[0], np.cumsum(frames)])  # (n + 1,) each drawn clip's first frame in the sample
    total = int(starts[-1])
    keep = np.sort(rng.choice(total, settings["fit_frames"], replace=False)) if total > settings["fit_frames"] else None
    features.to(device)
    parts, read = [], 0
    for i, clip in enumerate(tqdm(drawn, unit="clip", desc="hidden k-means sample", disable=not progress)):
        try:
            wav = torch.from_numpy(corpus.audio(clip)).to(device)
        except (CorpusError, OSError, ValueError) as e:
            log.warning("hidden k-means fit: skipping clip %s: %s", clip.id, e)
            continue
        if wav.shape[0] != clip.length or not torch.isfinite(wav).all():
            log.warning("hidden k-means fit: skipping clip %s: truncated or non-finite audio", clip.id)
            continue
        h = features.clip(wav).cpu().numpy()  # (T, D)
        rows = np.arange(frames[i]) if keep is None else keep[(keep >= starts[i]) & (keep < starts[i + 1])] - starts[i]
        parts.append(h[rows])
        read += 1
    if not read:
        raise CorpusError(f"hidden k-means fit: no readable audio among the {n} clips drawn from {corpus.root}")
    x = np.concatenate(parts)  # (N, D), corpus order
    info = {"clips": len(clips), "clips_drawn": n, "clips_read": read, "frames_drawn": total,
            "frames": int(x.shape[0])}  # fmt: skip
    return np.ascontiguousarray(x, dtype=np.float32), info


def fit_hidden_kmeans(corpus: Corpus, features: HiddenFeatures, settings: dict[str, Any],
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
    x, info = fit_sample(corpus, features, settings, device, progress)
    t1 = time.perf_counter()
    k = settings["n_clusters"][0]
    if x.shape[0] < k:
        raise TeacherError(
            f"hidden k-means fit: {x.shape[0]} frames drawn ({info['clips_drawn']} of {info['clips']} clips, "
            f"fit_fraction {settings['fit_fraction']}) < {k} clusters: raise label.hidden.fit_fraction or lower "
            "label.hidden.n_clusters"
        )
    log.info("hidden k-means: %d clusters on %d frames of layer %d (%d clips)", k, x.shape[0], settings["layer"],
             info["clips_read"])  # fmt: skip
    centroids, inertia = fit_centroids(x, k, settings["seed"], inertia=True, threads=threads, **settings["kmeans"])
    dim = x.shape[1]
    info.update(inertia=inertia, features_seconds=round(t1 - t0, 3), kmeans_seconds=round(time.perf_counter() - t1, 3))
    return KMeansModel(dict(settings), [centroids], [np.zeros(dim, np.float32)], [np.ones(dim, np.float32)], info)
