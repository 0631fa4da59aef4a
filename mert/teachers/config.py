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


@section("label")
@dataclass
class LabelParams:
    """Parameters of ``mert label`` (``params.yaml`` section ``label``)."""

    teacher: Literal["rvq", "kmeans"] = "rvq"
    batch_size: int = 8
    """Windows encoded per forward pass."""
    chunk_seconds: float = 30.0
    """Long clips are encoded in windows of about this length (plus context); shorter clips whole."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available). Does not change the labels' key."""
    rvq: RVQParams = field(default_factory=RVQParams)
    kmeans: KMeansParams = field(default_factory=KMeansParams)

    def __post_init__(self):
        if self.batch_size < 1 or self.chunk_seconds < 1.0:
            raise ValueError("batch_size must be >= 1 and chunk_seconds >= 1.0")
