"""Per-layer MERT features for audio files: the library side of ``mert extract``.

Each file is decoded with :func:`mert.audio.load_audio` (any format/rate the data layer reads, downmixed and
resampled to the model rate); undecodable or too-short files are reported as failed with the reason, a file of
digital silence (every sample 0) is reported as silent, both are skipped, and the rest proceeds. Outputs per
file are the hidden states of the chosen layers, time-averaged (``mean``, shape (n_layers, D)) and/or frame
level (``frames``, (n_layers, T, D)), as ``.npy`` or ``.safetensors``, each written atomically.

Long audio is encoded in windows of ``chunk_seconds`` (default 30 s, the MARBLE window) overlapping by
``overlap_seconds``, so memory and attention cost stay bounded whatever the track length (the released model
asked for 90 GB on a 10-minute track in one pass). Window starts are multiples of the conv stride, so every
window's frames sit exactly on the whole-clip frame grid; in each overlap the frames of the window whose
centre is nearer are kept. The stitched features are NOT identical to a whole-clip pass: layer 0's GroupNorm
normalises over each window instead of the whole clip, and attention sees only the window. The size of the
difference is measured by ``benchmarks/encoder.py --chunking``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mert.audio import AUDIO_LIKE, AudioError, load_audio
from mert.model.config import MERTConfig
from mert.model.encoder import MERT
from mert.utils.io import atomic_save_npy, atomic_write, atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """One window of a clip: samples ``[start, start + length)``; its frames ``[keep_from, keep_to)`` are kept.

    ``frame_offset`` is the whole-clip index of the window's first frame (``start // total_stride``).
    """

    start: int
    length: int
    frame_offset: int
    keep_from: int
    keep_to: int


def plan_chunks(num_samples: int, cfg: MERTConfig, chunk_seconds: float, overlap_seconds: float) -> list[Chunk]:
    """Split a clip into stride-aligned overlapping windows whose kept frames tile the whole-clip frames.

    Args:
        num_samples: clip length in samples.
        cfg: model config (frame arithmetic).
        chunk_seconds: window length; a clip no longer than this is one window.
        overlap_seconds: overlap between consecutive windows (less than ``chunk_seconds``).

    Returns:
        Windows in time order; their kept frames are disjoint and cover ``cfg.num_frames(num_samples)`` frames.
    """
    stride = cfg.total_stride
    window = max(cfg.receptive_field, int(round(chunk_seconds * cfg.sample_rate)) // stride * stride)
    overlap = max(int(round(overlap_seconds * cfg.sample_rate)), cfg.receptive_field)  # no frame falls in a gap
    hop = (window - overlap) // stride * stride
    if hop <= 0:
        raise ValueError(f"overlap_seconds ({overlap_seconds}) must be shorter than chunk_seconds ({chunk_seconds})")
    starts = [0]
    if num_samples > window:
        starts = list(range(0, num_samples - window, hop))
        last = (num_samples - window) // stride * stride  # the last window ends at the clip end
        starts += [last] if last > starts[-1] else []
    lengths = [window] * (len(starts) - 1) + [num_samples - starts[-1]]
    first = [s // stride for s in starts]  # whole-clip index of each window's first frame
    ends = [f + cfg.num_frames(n) for f, n in zip(first, lengths)]
    cuts = [(first[i + 1] + ends[i]) // 2 for i in range(len(starts) - 1)] + [ends[-1]]  # middle of each overlap
    prev = [0] + cuts[:-1]
    return [Chunk(s, n, f, a - f, c - f) for s, n, f, a, c in zip(starts, lengths, first, prev, cuts)]


# ---------------------------------------------------------------------------------------------- one clip
@torch.inference_mode()
def encode_batch(model: MERT, wav: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Hidden states of ``layers`` for a batch of equal-length clips.

    Args:
        model: the encoder (eval mode).
        wav: (B, L) audio at the model rate.
        layers: hidden-state indices (0 = encoder input, N = last layer; negative allowed).

    Returns:
        (n_layers, B, T, D) float32 on the CPU.
    """
    p = next(model.parameters())
    states = model(wav.to(device=p.device, dtype=p.dtype), output_hidden_states=True).hidden_states
    return torch.stack([states[i] for i in layers]).float().cpu()  # (n_layers, B, T, D)


def encode_long(
    model: MERT,
    wav: torch.Tensor,
    layers: Sequence[int] | None = None,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 5.0,
    batch_size: int = 4,
) -> torch.Tensor:
    """Frame-level features of one clip of any length, in bounded memory (windows stitched, see module doc).

    Args:
        model: the encoder (eval mode).
        wav: (L,) audio at the model rate.
        layers: hidden-state indices; None = all ``num_hidden_layers + 1``.
        chunk_seconds: window length.
        overlap_seconds: overlap of consecutive windows.
        batch_size: windows per forward pass.

    Returns:
        (n_layers, T, D) with T = ``model.config.num_frames(L)``.
    """
    layers = _layers(model.config, layers)
    chunks = plan_chunks(wav.shape[-1], model.config, chunk_seconds, overlap_seconds)
    parts: list[torch.Tensor] = []
    for group in _equal_length_groups(chunks, batch_size):
        batch = torch.stack([wav[c.start : c.start + c.length] for c in group])  # (b, window)
        feats = encode_batch(model, batch, layers)  # (n_layers, b, t, D)
        parts += [feats[:, j, c.keep_from : c.keep_to] for j, c in enumerate(group)]
    return torch.cat(parts, dim=1)  # (n_layers, T, D)


@torch.inference_mode()
def hidden_state_in_windows(model: MERT, wav: torch.Tensor, layer: int, window_frames: int,
                            context_frames: int) -> torch.Tensor:  # fmt: skip
    """Hidden state ``layer`` of one clip of any length: the front end on the whole clip, the transformer in windows.

    Unlike :func:`encode_long` (windows of audio, each with its own statistics), everything below the transformer is
    the whole-clip pass's exactly: the per-clip waveform normalisation (``do_normalize``), layer 0's GroupNorm over
    the whole clip (the conv stack streams in bounded memory, :class:`mert.model.encoder.FeatureExtractor`) and the
    feature projection. The projected frames are then cut into ``ceil(T / window_frames)`` even windows, each
    encoded by the transformer with up to ``context_frames`` frames of context on each side (stopping at ``layer``,
    as fairseq's ``extract_features(output_layer=...)``). The positional convolution of a kept frame is exact when
    ``context_frames >= num_conv_pos_embeddings // 2``; attention sees the window and its context only. One window
    (``T <= window_frames``) is the whole-clip pass: ``model(wav, output_layer=layer).last_hidden_state``.

    Args:
        model: the encoder (eval mode).
        wav: (L,) audio at the model rate, L >= the receptive field.
        layer: hidden-state index (0..``num_hidden_layers``).
        window_frames: kept frames per window.
        context_frames: frames of context on each side of a window.

    Returns:
        (T, D) with T = ``model.config.num_frames(L)``.
    """
    import math

    from mert.model.encoder import normalize_waveform

    x = wav[None]  # (1, L)
    if model.config.do_normalize:
        x = normalize_waveform(x)
    h = model.feature_projection(model.feature_extractor(x))  # (1, T, D): whole-clip statistics
    n_frames = h.shape[1]
    n = max(1, math.ceil(n_frames / window_frames))
    out = h.new_empty(n_frames, h.shape[2])  # (T, D)
    for k in range(n):
        a, b = k * n_frames // n, (k + 1) * n_frames // n
        s, e = max(0, a - context_frames), min(n_frames, b + context_frames)
        y, _ = model.encoder(h[:, s:e], output_layer=layer)  # (1, e - s, D)
        out[a:b] = y[0, a - s : b - s]
    return out


def _layers(cfg: MERTConfig, layers: Sequence[int] | None) -> list[int]:
    n = cfg.num_hidden_layers + 1
    if layers is None:
        return list(range(n))
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ValueError(f"layer indices {bad} out of range for {n} hidden states (0..{n - 1})")
    return [i % n for i in layers]


def _equal_length_groups(chunks: Sequence, batch_size: int, length=lambda c: c.length) -> Iterator[list]:
    """Consecutive runs of equal-length items, at most ``batch_size`` each (padding would change GroupNorm)."""
    group: list = []
    for c in chunks:
        if group and (len(group) == batch_size or length(c) != length(group[0])):
            yield group
            group = []
        group.append(c)
    if group:
        yield group


# ---------------------------------------------------------------------------------------------- files
@dataclass
class ExtractOptions:
    """What ``extract_features`` computes and writes."""

    layers: list[int] | None = None
    """Hidden-state indices to keep (None = all: 13 for 95M, 25 for 330M)."""
    pooling: Literal["mean", "frames", "both"] = "mean"
    """Time-averaged (n_layers, D), frame level (n_layers, T, D), or both."""
    fmt: Literal["npy", "safetensors"] = "npy"
    """``<name>.mean.npy`` / ``<name>.frames.npy``, or one ``<name>.safetensors`` holding ``mean``/``frames``."""
    chunk_seconds: float = 30.0
    """Window length for long audio."""
    overlap_seconds: float = 5.0
    """Overlap between windows."""
    batch_size: int = 4
    """Equal-length windows (from one or several files) per forward pass."""
    frames_dtype: Literal["float32", "float16"] = "float32"
    """Storage dtype of frame-level features (float16 halves the size of long tracks)."""
    overwrite: bool = False
    """Recompute files whose outputs already exist (otherwise they are skipped, so a run can resume)."""


@dataclass
class ExtractSummary:
    """Outcome of one ``extract_features`` call."""

    written: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    silent: dict[str, str] = field(default_factory=dict)
    """Files of digital silence (path -> reason): skipped, not failures."""
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


def find_audio(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files and folders (recursively, audio-looking extensions) into ``(path, output name)`` pairs."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += [(p, p.relative_to(item)) for p in sorted(item.rglob("*")) if p.suffix.lower() in AUDIO_LIKE]
        else:
            found.append((item, Path(item.name)))  # a missing file is reported by the decoder
    names = [n.with_suffix("") for _, n in found]
    dup = {n for n in names if names.count(n) > 1}
    return [
        (p, n.with_name(n.name.replace(".", "_")) if n.with_suffix("") in dup else n.with_suffix("")) for p, n in found
    ]


def output_paths(out_dir: Path, name: Path, opts: ExtractOptions) -> list[Path]:
    """The files written for one input."""
    base = out_dir / name
    if opts.fmt == "safetensors":
        return [base.with_name(base.name + ".safetensors")]
    kinds = ["mean", "frames"] if opts.pooling == "both" else [opts.pooling]
    return [base.with_name(f"{base.name}.{k}.npy") for k in kinds]


class _Job:
    """One file in flight: its stitched frames (or running sum) until its last window comes back."""

    def __init__(self, path: Path, name: Path, n_frames: int, n_chunks: int, n_layers: int, dim: int, opts):
        self.path, self.name, self.n_frames, self.remaining = path, name, n_frames, n_chunks
        keep = opts.pooling in ("frames", "both")
        self.frames = np.empty((n_layers, n_frames, dim), dtype=opts.frames_dtype) if keep else None
        self.total = np.zeros((n_layers, dim), dtype=np.float64)

    def add(self, chunk: Chunk, feats: torch.Tensor) -> None:
        """Store one window's kept frames (n_layers, k, D)."""
        a = chunk.frame_offset + chunk.keep_from
        x = feats.numpy()
        if self.frames is not None:
            self.frames[:, a : a + x.shape[1]] = x
        self.total += x.sum(axis=1, dtype=np.float64)
        self.remaining -= 1

    def outputs(self, opts: ExtractOptions) -> dict[str, np.ndarray]:
        out = {}
        if opts.pooling in ("mean", "both"):
            out["mean"] = (self.total / self.n_frames).astype(np.float32)  # (n_layers, D)
        if self.frames is not None:
            out["frames"] = self.frames  # (n_layers, T, D)
        return out


@dataclass
class _Window:
    job: _Job
    chunk: Chunk
    wav: torch.Tensor  # (length,)


def extract_features(
    model: MERT,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    options: ExtractOptions | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Write per-layer features for every audio file in ``inputs`` (files and/or folders) under ``out_dir``.

    Output names mirror the input paths (relative to a folder input, or the file name), without the audio
    extension. Bad files are logged and listed in the summary; the others proceed. ``extract_summary.json``
    in ``out_dir`` records the options, the layers and every failure.

    Args:
        model: the encoder (put in eval mode here).
        inputs: audio files and/or folders.
        out_dir: output folder (created).
        options: what to compute and write.
        progress: show a tqdm bar over files.

    Returns:
        The :class:`ExtractSummary`.
    """
    from tqdm.auto import tqdm

    opts, out_dir, t0 = options or ExtractOptions(), Path(out_dir), time.perf_counter()
    model.eval()
    layers = _layers(model.config, opts.layers)
    summary = ExtractSummary()
    todo = []
    for path, name in find_audio(inputs):
        if not opts.overwrite and all(p.exists() for p in output_paths(out_dir, name, opts)):
            summary.skipped_existing.append(str(path))
        else:
            todo.append((path, name))
    with tqdm(total=len(todo), unit="file", desc="extract", disable=not progress) as bar:
        windows = _windows(todo, model.config, opts, len(layers), summary, bar)
        for group in _equal_length_groups(windows, opts.batch_size, length=lambda w: w.wav.shape[0]):
            feats = encode_batch(model, torch.stack([w.wav for w in group]), layers)  # (n_layers, b, t, D)
            for j, w in enumerate(group):
                w.job.add(w.chunk, feats[:, j, w.chunk.keep_from : w.chunk.keep_to])
                if w.job.remaining == 0:
                    _write(w.job.outputs(opts), out_dir, w.job.name, opts, layers, model.config)
                    summary.written.append(str(w.job.path))
                    bar.update(1)
    summary.wall_seconds = time.perf_counter() - t0
    report = {"layers": layers, "options": opts.__dict__, **summary.__dict__}
    atomic_write_json(out_dir / "extract_summary.json", report)
    return summary


def _windows(todo, cfg: MERTConfig, opts: ExtractOptions, n_layers: int, summary: ExtractSummary, bar):
    """Decode files one at a time and yield their windows; failures are recorded and skipped."""
    for path, name in todo:
        try:
            audio = load_audio(path, sample_rate=cfg.sample_rate)
            if audio.shape[0] < cfg.receptive_field:
                raise AudioError(path, f"too short: {audio.shape[0]} samples < {cfg.receptive_field} (one frame)")
        except AudioError as e:
            silent = e.reason.startswith("silent")
            log.log(logging.INFO if silent else logging.WARNING, "skipping %s: %s", path, e.reason)
            (summary.silent if silent else summary.failed)[str(path)] = e.reason
            bar.update(1)
            continue
        wav = torch.from_numpy(audio)
        summary.audio_seconds += wav.shape[0] / cfg.sample_rate
        chunks = plan_chunks(wav.shape[0], cfg, opts.chunk_seconds, opts.overlap_seconds)
        job = _Job(path, name, cfg.num_frames(wav.shape[0]), len(chunks), n_layers, cfg.hidden_size, opts)
        for c in chunks:
            yield _Window(job, c, wav[c.start : c.start + c.length])


def _write(arrays: dict[str, np.ndarray], out_dir: Path, name: Path, opts, layers, cfg: MERTConfig) -> None:
    paths = output_paths(out_dir, name, opts)
    if opts.fmt == "npy":
        for p in paths:
            atomic_save_npy(p, arrays[p.name.rsplit(".", 2)[-2]])
        return
    from safetensors.numpy import save

    meta = {"layers": ",".join(map(str, layers)), "frame_rate": str(cfg.frame_rate)}
    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta)
    with atomic_write(paths[0]) as f:
        f.write(data)
