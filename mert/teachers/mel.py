"""The log-mel front end of the MusicFM / MuQ teachers, at the student's 75 Hz frame rate, and its statistics.

MusicFM (Won et al. 2023, ``minzwon/musicfm`` ``modules/features.py``) and MuQ (Zhu et al. 2025,
``tencent-ailab/MuQ`` ``modules/features.py``) both compute ``torchaudio.transforms.MelSpectrogram(24000,
n_fft=2048, hop_length=240, n_mels=128)`` (Hann window, power 2, HTK mel scale, no filter norm, centred with
reflect padding) followed by ``AmplitudeToDB()`` (``10 log10(max(x, 1e-10))``), normalise it with one global
mean and standard deviation of the corpus (MusicFM's README calls this "exceptionally crucial"), and stack 4
consecutive frames into one ``4 x 128 = 512``-dim token (``rearrange(x, "b f (t s) -> b t (s f)", s=4)``): a
100 Hz spectrogram gives 25 Hz tokens, each summarising the 4 frames of its own token period.

**Our frame rate.** The student runs at 75 Hz (hop 320). We keep the construction, token = ``stack``
consecutive mel frames covering one token period, and choose the mel hop so that the token rate IS the student
rate: ``hop = 320 / stack`` (80 samples for ``stack = 4``), i.e. we compute the mel at a 4x finer hop and
stack, rather than computing a 75 Hz mel and stacking overlapping frames (neighbouring tokens would then share
3/4 of their input) or resampling 25 Hz codes (3 student frames per code). Token ``i`` stacks mel frames
``stack i + a .. stack i + a + stack - 1``, whose centres average ``320 i + 200``: exactly the centre of the
student frame ``i`` (samples ``[320 i, 320 i + 400)``; ``a = 1`` for ``stack = 4``). A token reads samples
within ``n_fft / 2`` of its frames' centres, so long clips are labelled in windows with
:attr:`MelSpec.context_frames` of context on each side and give the same tokens as the whole clip.

**Batches.** The reflect padding is applied to each row at its own length (as if the row were labelled alone),
then the padded rows are framed without centring, so the valid tokens of a right-zero-padded row equal those of
the row alone.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mert.data.shards import Corpus
from mert.teachers.base import HOP, WINDOW, TeacherError
from mert.utils.io import atomic_write_json, sha256_json

log = logging.getLogger(__name__)

STATS_FILE = "mel-stats.json"
NORMS = ("global", "per_bin")
"""Token normalisation: ``global`` (MusicFM / MuQ: one mean and std over every bin) or ``per_bin`` (a documented
deviation: each mel bin standardised with its own corpus mean and std, as BEST-RQ's per-dimension normalisation)."""
BIN_STD_FLOOR = 1.0
"""dB: a per-bin std is never taken below this, so near-constant bins (e.g. above the Nyquist of a 16 kHz source)
are not blown up to unit variance."""
AMIN_DB = -100.0
"""``AmplitudeToDB`` floor: ``10 log10(1e-10)``."""


@dataclass(frozen=True)
class MelSpec:
    """Log-mel token settings (defaults: MusicFM / MuQ's 128-bin mel, 4 frames per token).

    Attributes:
        sample_rate: Hz.
        n_fft: FFT size = window length in samples (2048: 85 ms at 24 kHz).
        n_mels: mel bins (HTK scale, 0 Hz .. Nyquist).
        stack: mel frames per token; the mel hop is ``320 / stack`` samples so tokens come at 75 Hz.
    """

    sample_rate: int = 24_000
    n_fft: int = 2048
    n_mels: int = 128
    stack: int = 4

    def __post_init__(self) -> None:
        if self.stack < 1 or HOP % self.stack:
            raise ValueError(f"stack {self.stack} must divide the student hop {HOP} (mel hop = {HOP} / stack)")
        if self.n_fft < self.hop or self.n_mels < 1:
            raise ValueError(f"n_fft {self.n_fft} must be >= the mel hop {self.hop} and n_mels >= 1")

    @property
    def hop(self) -> int:
        """Mel hop in samples (80 for ``stack = 4``)."""
        return HOP // self.stack

    @property
    def dim(self) -> int:
        """Token dimension ``stack * n_mels`` (512)."""
        return self.stack * self.n_mels

    @property
    def offset(self) -> int:
        """First mel frame of token 0; the token's frame centres then average ``200`` up to ``hop / 2``.

        200 is the centre of student frame 0 (samples ``[0, 400)``); exact for ``stack`` 4 and 20.
        """
        return max(0, math.floor((WINDOW / 2) / self.hop - (self.stack - 1) / 2 + 0.5))

    @property
    def context_frames(self) -> int:
        """Student frames of context a window needs on each side for its kept tokens to equal whole-clip tokens."""
        half = self.n_fft // 2
        left = half - self.hop * self.offset  # samples before 320 i that token i reads
        right = self.hop * (self.offset + self.stack - 1) + half - WINDOW  # samples after 320 i + 400
        return max(0, math.ceil(max(left, right) / HOP)) + 1

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hop": self.hop, "window": "hann", "power": 2.0, "mel_scale": "htk", "db": True}


class MelFrontEnd(nn.Module):
    """Stacked log-mel tokens of a right-zero-padded batch (see the module docstring).

    Args:
        spec: the settings.
    """

    def __init__(self, spec: MelSpec = MelSpec()):
        super().__init__()
        import torchaudio

        self.spec = spec
        self.melspec = torchaudio.transforms.MelSpectrogram(
            spec.sample_rate, spec.n_fft, hop_length=spec.hop, n_mels=spec.n_mels, center=False
        )
        self.to_db = torchaudio.transforms.AmplitudeToDB()

    def log_mel(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-row centred log-mel.

        Args:
            wav: (B, S) float32, row ``b`` valid up to ``lengths[b]``.
            lengths: (B,) valid samples.

        Returns:
            (B, n_mels, S // hop + 1) dB; row ``b``'s first ``lengths[b] // hop + 1`` frames equal
            ``AmplitudeToDB()(MelSpectrogram(center=True)(wav[b, :lengths[b]]))``.
        """
        half = self.spec.n_fft // 2
        padded = wav.new_zeros(wav.shape[0], wav.shape[1] + 2 * half)  # (B, S + n_fft)
        for b, n in enumerate(lengths.tolist()):
            row = wav[b, :n].view(1, 1, n)
            # torch.stft's centring: reflect; rows too short to reflect get zeros (never in an ingested corpus)
            mode = "reflect" if n > half else "constant"
            padded[b, : n + 2 * half] = F.pad(row, (half, half), mode=mode).view(-1)
        return self.to_db(self.melspec(padded))  # (B, n_mels, S // hop + 1)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, F, stack * n_mels) dB tokens at 75 Hz, token ``i`` centred on student frame ``i``.

        ``F >= student_frames(S)``; tokens past a row's own student frame count are garbage.
        """
        s = self.spec
        mel = self.log_mel(wav, lengths)  # (B, n_mels, T)
        n_tok = (mel.shape[-1] - s.offset) // s.stack
        x = mel[..., s.offset : s.offset + n_tok * s.stack]  # (B, n_mels, F * stack)
        x = x.reshape(mel.shape[0], s.n_mels, n_tok, s.stack).permute(0, 2, 3, 1)  # (B, F, stack, n_mels)
        return x.reshape(mel.shape[0], n_tok, s.dim)  # "b f (t s) -> b t (s f)" as MusicFM / MuQ


@dataclass
class MelStats:
    """Mean / standard deviation of the log-mel (dB) of a corpus: the MusicFM / MuQ normalisation.

    Attributes:
        spec: the :class:`MelSpec` as a dict.
        mean: dB, over every bin of every frame of the sample (``global``).
        std: dB.
        frames: mel frames counted.
        clips: clips of the corpus.
        bin_mean: (n_mels,) dB, per mel bin (``per_bin``).
        bin_std: (n_mels,) dB.
    """

    spec: dict[str, Any]
    mean: float
    std: float
    frames: int = 0
    clips: int = 0
    bin_mean: list[float] = field(default_factory=list)
    bin_std: list[float] = field(default_factory=list)

    @property
    def hash(self) -> str:
        """Versions the statistics: SHA-256 over the spec, means and stds."""
        return sha256_json(
            {"spec": self.spec, "mean": self.mean, "std": self.std, "bin_mean": self.bin_mean, "bin_std": self.bin_std}
        )

    def vectors(self, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension ``(mean, std)`` of a stacked token, each (stack * n_mels,) float32, for ``norm``.

        Raises:
            TeacherError: ``per_bin`` with statistics that have no per-bin values.
        """
        stack, n_mels = self.spec["stack"], self.spec["n_mels"]
        if norm == "global":
            return torch.full((stack * n_mels,), self.mean), torch.full((stack * n_mels,), self.std)
        if norm != "per_bin":
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if len(self.bin_mean) != n_mels:
            raise TeacherError("these mel statistics have no per-bin values: recompute them for norm: per_bin")
        std = torch.tensor(self.bin_std).clamp_min(BIN_STD_FLOOR)
        return torch.tensor(self.bin_mean).repeat(stack), std.repeat(stack)  # tokens are "(s f)": bins inner

    def save(self, path: str | Path) -> Path:
        """Write ``mel-stats.json`` (with its hash) atomically; ``path`` is the file or its directory."""
        path = Path(path)
        path = path / STATS_FILE if path.suffix != ".json" else path
        atomic_write_json(path, {**asdict(self), "hash": self.hash})
        return path

    @classmethod
    def load(cls, path: str | Path) -> MelStats:
        """Load a ``mel-stats.json`` (or the one in directory ``path``).

        Raises:
            TeacherError: missing, unreadable, or its values do not match the recorded hash.
        """
        path = Path(path)
        path = path / STATS_FILE if path.is_dir() else path
        try:
            meta = json.loads(path.read_text())
            stats = cls(**{k: v for k, v in meta.items() if k != "hash"})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TeacherError(f"mel statistics {path} are missing or unreadable: {e}") from e
        if stats.hash != meta.get("hash"):
            raise TeacherError(f"mel statistics {path}: values do not match the recorded hash (modified or corrupt)")
        return stats

    def check(self, spec: MelSpec, where: str) -> None:
        """Raise :class:`TeacherError` unless these statistics were computed with ``spec``."""
        if self.spec != spec.as_dict():
            raise TeacherError(f"{where}: mel statistics computed with {self.spec}, the teacher uses {spec.as_dict()}")


def read_window(corpus: Corpus, clip, start: int, n: int) -> torch.Tensor | None:
    """(1, n) audio of a fit window, or None (with a warning) if its shard is unreadable or non-finite."""
    try:
        x = corpus.audio(clip, start, n)
    except Exception as e:  # noqa: BLE001 - a bad shard must not stop a fit
        log.warning("skipping clip %s in a teacher fit: %s", clip.id, e)
        return None
    if x.shape[0] != n or not np.isfinite(x).all():
        log.warning("skipping clip %s in a teacher fit: truncated or non-finite audio", clip.id)
        return None
    return torch.from_numpy(np.ascontiguousarray(x))[None]


@torch.no_grad()
def compute_mel_stats(corpus: Corpus, spec: MelSpec = MelSpec(), fit_frames: int = 200_000) -> MelStats:
    """Log-mel mean / std in dB (global and per mel bin) over up to ``fit_frames`` student frames of windows.

    The windows are spread evenly over the corpus. The sums are accumulated in float64; means and stds are rounded
    to 1e-4 dB so that last-bit FFT differences between machines do not change the statistics' hash.

    Raises:
        TeacherError: no readable audio.
    """
    from mert.teachers.kmeans import fit_windows

    front = MelFrontEnd(spec)
    total, total_sq, count = torch.zeros(spec.n_mels, dtype=torch.float64), torch.zeros(spec.n_mels).double(), 0
    for clip, start, n in fit_windows(corpus, corpus.clips, fit_frames):
        x = read_window(corpus, clip, start, n)
        if x is None:
            continue
        mel = front.log_mel(x, torch.tensor([n]))[0].double()  # (n_mels, n // hop + 1)
        total, total_sq, count = total + mel.sum(1), total_sq + mel.pow(2).sum(1), count + mel.shape[1]
    if not count:
        raise TeacherError(f"mel statistics: no readable audio in corpus {corpus.root}")
    mean, bin_mean = float(total.sum()) / (count * spec.n_mels), total / count
    std = math.sqrt(max(float(total_sq.sum()) / (count * spec.n_mels) - mean**2, 1e-12))
    bin_std = (total_sq / count - bin_mean.pow(2)).clamp_min(1e-12).sqrt()
    r = lambda v: [round(float(a), 4) for a in v]  # noqa: E731
    return MelStats(spec.as_dict(), round(mean, 4), round(std, 4), count, len(corpus.clips), r(bin_mean), r(bin_std))


def corpus_mel_stats(
    spec: MelSpec, stats_path: str | None, fit_frames: int, corpus_dir: str | Path | None, labels_dir: str | Path | None
) -> MelStats:
    """The statistics a teacher uses: ``stats_path`` if given, else the ones computed earlier on this corpus
    (``<labels_dir>/mel-stats/<key>.json``, keyed by spec, budget and the clips' hashes), else computed and saved.
    """
    if stats_path:
        stats = MelStats.load(stats_path)
        stats.check(spec, str(stats_path))
        return stats
    if corpus_dir is None or labels_dir is None:
        raise TeacherError(
            "mel statistics: no stats file given, so a corpus and a labels dir are needed to compute them"
        )
    corpus = Corpus(corpus_dir, verify=False)
    key = sha256_json({"spec": spec.as_dict(), "fit_frames": fit_frames, "clips": [c.sha256 for c in corpus]})
    path = Path(labels_dir) / "mel-stats" / f"{key[:12]}.json"
    if path.exists():
        return MelStats.load(path)
    log.info("mel statistics: computing on %d clips -> %s", len(corpus), path)
    stats = compute_mel_stats(corpus, spec, fit_frames)
    stats.save(path)
    return stats
