"""``params.yaml`` section ``label``: which teacher labels the corpus, and how (cheap to import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mert.params import section

FEATURES = ("mfcc", "logmel", "chroma")


@dataclass
class RVQParams:
    """EnCodec RVQ teacher (``label.rvq``)."""

    weights: str = "random"
    """``pretrained`` (official, from the torch hub cache or downloaded), ``random`` (seeded
    random-projection teacher, BEST-RQ style: not MERT's labels) or a path to a state dict file."""
    seed: int = 0
    """Seed of the random-projection teacher (ignored for other weights)."""
    bandwidth: float = 6.0
    """kbps; 6.0 -> 8 codebooks x 1024 codes at 75 Hz (the reference)."""
    context_seconds: float = 1.0
    """Left context of each chunk window of a long clip (the encoder is causal; its LSTM needs warm-up)."""

    def __post_init__(self):
        if self.context_seconds < 0:
            raise ValueError("rvq.context_seconds must be >= 0")


@dataclass
class KMeansParams:
    """MFCC / log-mel / chroma k-means teacher (``label.kmeans``), MERT-v0 / HuBERT style."""

    features: list[str] = field(default_factory=lambda: ["mfcc"])
    """One codebook per entry: ``mfcc`` (13 + deltas + delta-deltas), ``logmel``, ``chroma``."""
    n_clusters: list[int] = field(default_factory=lambda: [100])
    """Clusters per codebook, one per ``features`` entry (HuBERT's first iteration: 100 on MFCC)."""
    n_mels: int = 64
    n_mfcc: int = 13
    fit_frames: int = 200_000
    """At most this many frames (spread evenly over the corpus) are used to fit the k-means."""
    seed: int = 0
    model: str | None = None
    """A fitted k-means model directory; null = fit on the corpus (saved under ``<labels_dir>/kmeans-models/``)."""

    def __post_init__(self):
        bad = [f for f in self.features if f not in FEATURES]
        if bad or not self.features:
            raise ValueError(f"kmeans.features {self.features}: each must be one of {list(FEATURES)}")
        if len(self.n_clusters) != len(self.features) or min(self.n_clusters) < 2:
            raise ValueError("kmeans.n_clusters needs one value >= 2 per features entry")
        if max(self.n_clusters) > 65535:
            raise ValueError("kmeans.n_clusters must fit uint16 labels")


@dataclass
class BestRQParams:
    """Mel BEST-RQ teacher (``label.bestrq``), MusicFM (Won et al. 2023): frozen random projection + codebook."""

    n_codebooks: int = 1
    """K independent projection + codebook pairs (MusicFM: 1; e.g. 8 for EnCodec's shape)."""
    codebook_size: int = 4096
    """C codes per codebook (MusicFM: 4096)."""
    codebook_dim: int = 16
    """Projection width (MusicFM: 16)."""
    seed: int = 142
    """Codebook k is drawn under seed + k (MusicFM: 142)."""
    n_mels: int = 128
    n_fft: int = 2048
    stack: int = 4
    """Mel frames per token; the mel hop is 320 / stack samples so that tokens come at the student's 75 Hz."""
    fit_frames: int = 200_000
    """At most this many student frames (spread over the corpus) enter the mel statistics."""
    stats: str | None = None
    """A ``mel-stats.json`` (``mert teacher fit --teacher bestrq``); null = computed on the corpus and saved
    under ``<labels_dir>/mel-stats/``."""
    norm: Literal["global", "per_bin"] = "global"
    """``global``: one corpus mean / std (MusicFM); ``per_bin``: per mel bin (a deviation, spreads the codes)."""

    def __post_init__(self):
        _check_codebooks("bestrq", self.n_codebooks, self.codebook_size, self.codebook_dim)
        _check_mel("bestrq", self.n_mels, self.n_fft, self.stack)


@dataclass
class MelRVQParams:
    """Mel-RVQ teacher (``label.melrvq``), MuQ (Zhu et al. 2025): a residual VQ fitted to reconstruct the mel."""

    n_codebooks: int = 8
    codebook_size: int = 1024
    codebook_dim: int = 16
    n_mels: int = 128
    n_fft: int = 2048
    stack: int = 4
    stale_steps: int = 100
    """A code unused for this many consecutive steps is replaced (MuQ: 100)."""
    commitment_weight: float = 0.25
    lr: float = 1e-3
    """Adam learning rate (MuQ: 1e-4 over 4000 steps of 32 x 5 s; larger here so a CPU fit takes minutes)."""
    steps: int = 1000
    batch_frames: int = 4096
    """Tokens (75 Hz frames) per step, drawn at random from the fit sample."""
    fit_frames: int = 200_000
    """At most this many student frames (spread over the corpus) form the fit sample and the mel statistics."""
    seed: int = 0
    norm: Literal["global", "per_bin"] = "global"
    """``global``: one corpus mean / std (MuQ); ``per_bin``: per mel bin (a documented deviation)."""
    checkpoint_every: int = 100
    """Steps between fit checkpoints (a killed fit resumes; does not change the model)."""
    model: str | None = None
    """A fitted model directory (``mert teacher fit``); null = fit on the corpus (``<labels_dir>/melrvq-models/``)."""

    def __post_init__(self):
        _check_codebooks("melrvq", self.n_codebooks, self.codebook_size, self.codebook_dim)
        _check_mel("melrvq", self.n_mels, self.n_fft, self.stack)
        if min(self.steps, self.batch_frames, self.fit_frames, self.stale_steps, self.checkpoint_every) < 1:
            raise ValueError("melrvq: steps, batch_frames, fit_frames, stale_steps and checkpoint_every must be >= 1")
        if self.lr <= 0 or self.commitment_weight < 0:
            raise ValueError("melrvq: lr must be > 0 and commitment_weight >= 0")

    def settings(self):
        """The :class:`mert.teachers.melrvq.MelRVQSettings` these parameters fit."""
        from mert.teachers.melrvq import MelRVQSettings

        keep = ("model", "checkpoint_every")
        return MelRVQSettings(**{k: v for k, v in self.__dict__.items() if k not in keep})


@dataclass
class HiddenParams:
    """HuBERT-style teacher iteration (``label.hidden``): k-means codes of a trained encoder's hidden state.

    HuBERT's second iteration (Hsu et al. 2021) clusters the hidden states of the first iteration's model; the
    defaults are fairseq's ``examples/hubert/simple_kmeans`` (``learn_kmeans.py``: ``MiniBatchKMeans`` with
    k-means++, ``batch_size 10000``, ``n_init 20``, ``max_iter 100``, ``max_no_improvement 100``, ``tol 0``,
    ``reassignment_ratio 0``; README: fitted on ``--percent 0.1`` of the data; HuBERT base iteration 2: 500
    clusters of layer 6 of 12). :mod:`mert.teachers.hidden` says how the features are computed.
    """

    model: str | None = None
    """The parent whose hidden states are clustered: an HF-layout export dir, a training checkpoint
    (``checkpoints/step-XXXXXXXX``), a hub id (``org/name[@revision]``), ``models:/name@alias`` /
    ``models:/name/N``, or ``random:<preset or export dir>[@seed]`` (a random-init encoder). Required
    (``mert label --parent MODEL`` sets it)."""
    layer: int | None = None
    """Hidden state clustered: 0 = the encoder input (after the positional conv), N = the last layer; -1 = the last.
    null = the middle layer, ``num_hidden_layers // 2`` (HuBERT base iteration 2: 6 of 12)."""
    n_clusters: int = 500
    """k (HuBERT iterations 2 and 3: 500)."""
    fit_fraction: float = 0.1
    """Share of the corpus's clips drawn at random (seeded) for the k-means fit, each encoded whole as for its labels:
    fairseq's ``--percent 0.1`` (10% of the utterances)."""
    fit_frames: int = 1_000_000
    """At most this many frames of that sample are kept (drawn at random): the fit holds (frames, D) float32 in
    memory (1M frames of a 768-dim model: 3 GB)."""
    seed: int = 0
    """Seeds the fit sample and ``MiniBatchKMeans`` (``random_state``)."""
    kmeans_batch_size: int = 10_000
    """``MiniBatchKMeans(batch_size=...)`` (fairseq: 10000); its k-means++ initialisation reads 3x as many frames."""
    n_init: int = 20
    """k-means++ initialisations tried; the best is kept (fairseq: 20)."""
    max_iter: int = 100
    """Passes over the fit sample at most (fairseq: 100)."""
    max_no_improvement: int = 100
    """Stop after this many mini-batches without improvement of the smoothed inertia (fairseq: 100)."""
    fit_threads: int | None = None
    """BLAS / OpenMP threads of the k-means fit (null: every core). Does not change the labels' key. On an
    oversubscribed CPU, 1 (OpenBLAS's busy-waiting threads made a k-means++ initialisation 12x slower with 2)."""
    context_seconds: float = 2.5
    """Attention context on each side of a window of a clip longer than ``label.chunk_seconds`` (``mert extract``
    keeps 2.5 s too: 5 s overlaps, frames nearest the window's centre)."""
    kmeans_model: str | None = None
    """A fitted k-means directory (``mert teacher fit --teacher hidden``) for this parent and layer; null = fit on
    the corpus (saved under ``<labels_dir>/hidden-models/``, reused by later runs)."""

    def __post_init__(self):
        if not 2 <= self.n_clusters <= 65535:
            raise ValueError("hidden.n_clusters must be in [2, 65535] (uint16 labels)")
        if not 0.0 < self.fit_fraction <= 1.0:
            raise ValueError("hidden.fit_fraction must be in (0, 1]")
        if min(self.fit_frames, self.kmeans_batch_size, self.n_init, self.max_iter, self.max_no_improvement) < 1:
            raise ValueError("hidden: fit_frames, kmeans_batch_size, n_init, max_iter, max_no_improvement must be >= 1")
        if self.context_seconds < 0:
            raise ValueError("hidden.context_seconds must be >= 0")
        if self.fit_threads is not None and self.fit_threads < 1:
            raise ValueError("hidden.fit_threads must be >= 1 or null")

    def kmeans_options(self) -> dict:
        """``MiniBatchKMeans`` keyword arguments (fairseq ``learn_kmeans.py``; ``tol`` and ``reassignment_ratio``
        fixed at its 0.0).
        """
        return {"init": "k-means++", "batch_size": self.kmeans_batch_size, "n_init": self.n_init,
                "max_iter": self.max_iter, "max_no_improvement": self.max_no_improvement, "tol": 0.0,
                "reassignment_ratio": 0.0}  # fmt: skip


def _check_codebooks(name: str, k: int, c: int, d: int) -> None:
    if k < 1 or d < 1 or not 2 <= c <= 65536:
        raise ValueError(f"{name}: n_codebooks and codebook_dim must be >= 1, codebook_size in [2, 65536] (uint16)")


def _check_mel(name: str, n_mels: int, n_fft: int, stack: int) -> None:
    if stack < 1 or 320 % stack or n_mels < 1 or n_fft < 320 // stack:
        raise ValueError(f"{name}: stack must divide 320, n_mels >= 1 and n_fft >= the mel hop 320 / stack")


TEACHER_NAMES = ("rvq", "kmeans", "bestrq", "melrvq", "hidden")
"""``label.teacher``: EnCodec RVQ (MERT-v1), MFCC k-means (MERT-v0 / HuBERT), mel BEST-RQ (MusicFM), Mel-RVQ (MuQ),
k-means of a trained encoder's hidden state (HuBERT iteration 2+)."""


@section("label")
@dataclass
class LabelParams:
    """Parameters of ``mert label`` (``params.yaml`` section ``label``)."""

    teacher: Literal["rvq", "kmeans", "bestrq", "melrvq", "hidden"] = "rvq"
    """See :data:`TEACHER_NAMES`."""
    batch_size: int = 8
    """Windows encoded per forward pass."""
    chunk_seconds: float = 30.0
    """Long clips are encoded in windows of about this length (plus context); shorter clips whole."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available). Does not change the labels' key."""
    rvq: RVQParams = field(default_factory=RVQParams)
    kmeans: KMeansParams = field(default_factory=KMeansParams)
    bestrq: BestRQParams = field(default_factory=BestRQParams)
    melrvq: MelRVQParams = field(default_factory=MelRVQParams)
    hidden: HiddenParams = field(default_factory=HiddenParams)

    def __post_init__(self):
        if self.batch_size < 1 or self.chunk_seconds < 1.0:
            raise ValueError("batch_size must be >= 1 and chunk_seconds >= 1.0")
