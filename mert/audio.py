"""Audio decoding, resampling and validation: one file in, one clear answer out.

Decoding uses ``soundfile`` (libsndfile: wav, flac, ogg/vorbis, opus, mp3, aiff, ...), which
needs no system packages; resampling uses ``torchaudio.functional``'s windowed-sinc
resampler. Every failure is an :class:`AudioError` carrying the file and a human-readable
reason, so callers can quarantine the file and carry on with the rest.

libsndfile's MP3 decoder (libmpg123) prints resync notes straight to the process's stderr
(``Note: Illegal Audio-MPEG-Header 0x... at offset 40.``, ``Note: Trying to resync...``) while it
looks for frames in a damaged or non-MP3 file. :func:`quiet_mp3_decoder` captures file descriptor 2
around MP3 decoding, drops those notes (logged at debug level; the file's fate is the
:class:`AudioError` reason) and passes every other line through, so real errors still reach the console.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 24_000
"""MERT-v1's input rate (Hz)."""

DECODABLE = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64"}
"""Extensions libsndfile decodes."""

AUDIO_LIKE = DECODABLE | {".m4a", ".aac", ".wma", ".mp4", ".ape", ".alac", ".webm", ".mka", ".mid", ".midi"}
"""Extensions that look like audio: found by the scanner so the undecodable ones are reported, not ignored."""

MPG123_NOTE = re.compile(
    r"^(Note: |Warning: |\[src/libmpg123/[^\]]*\] (warning|note|error): |big_resync: |Error: (Encountered|Giving up))"
)
"""Lines libmpg123 writes to stderr while resyncing on damaged input (dropped by :func:`quiet_mp3_decoder`)."""
_STDERR_LOCK = threading.Lock()
log = logging.getLogger(__name__)


class AudioError(Exception):
    """A file that cannot be used as audio. ``reason`` is short and human readable."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """What the container says about a file, before decoding."""

    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def info(path: str | os.PathLike) -> AudioInfo:
    """Read a file's header. Raises :class:`AudioError` for missing, empty, unreadable or non-audio files."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in DECODABLE:
        raise AudioError(path, f"unsupported format '{ext}' (decodable: {', '.join(sorted(DECODABLE))})")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise AudioError(path, f"cannot stat: {e.strerror or e}") from e
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
        with quiet_mp3_decoder(path):
            i = sf.info(str(path))
    except PermissionError as e:
        raise AudioError(path, f"permission denied: {e.strerror or e}") from e
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        msg = _short(e)
        if "not a regular file" in msg or "Format not recognised" in msg or "unknown format" in msg.lower():
            msg = "unrecognised or corrupt header"
        raise AudioError(path, f"not decodable as audio ({msg})") from e
    if i.samplerate <= 0 or i.channels <= 0:
        raise AudioError(path, f"invalid header (rate={i.samplerate}, channels={i.channels})")
    return AudioInfo(int(i.samplerate), int(i.channels), int(i.frames), str(i.format))


def decode(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, AudioInfo]:
    """Decode a whole file to float32.

    Args:
        path: audio file.
        max_seconds: reject files longer than this (checked on the header, before decoding).

    Returns:
        ``(audio, info)`` with ``audio`` of shape ``(channels, frames)``, float32 in [-1, 1]
        for integer formats.
    """
    meta = info(path)
    if max_seconds is not None and meta.duration > max_seconds:
        raise AudioError(path, f"too long: {meta.duration:.0f} s > max {max_seconds:.0f} s")
    try:
        with quiet_mp3_decoder(path):
            data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError(path, f"corrupt or truncated audio data ({_short(e)})") from e
    # (frames, C)
    if meta.frames > 0 and data.shape[0] < meta.frames:
        raise AudioError(path, f"truncated: header says {meta.frames} frames, decoded {data.shape[0]}")
    if data.shape[0] == 0:
        raise AudioError(path, "no audio frames")
    if why := container_truncation(path, meta):
        raise AudioError(path, why)
    return np.ascontiguousarray(data.T), meta  # (C, frames)


@contextlib.contextmanager
def quiet_mp3_decoder(path: str | os.PathLike) -> Iterator[None]:
    """Silence libmpg123's resync notes on stderr while an MP3 file is opened or decoded; keep other output.

    File descriptor 2 is pointed at a temporary file for the duration (serialised by a lock, since the
    descriptor is process-wide); afterwards lines matching :data:`MPG123_NOTE` are logged at debug level and
    every other line is written back to stderr. Other formats run untouched.

    Args:
        path: the file being decoded (only ``.mp3`` files are captured).
    """
    if Path(path).suffix.lower() != ".mp3":
        yield
        return
    with _STDERR_LOCK, tempfile.TemporaryFile() as buf:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(buf.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            lines = buf.read().decode(errors="replace").splitlines(keepends=True)
            notes = [ln for ln in lines if MPG123_NOTE.match(ln)]
            if notes:
                log.debug("%s: mp3 decoder notes: %s", path, " | ".join(n.strip() for n in notes[:5]))
            other = "".join(ln for ln in lines if not MPG123_NOTE.match(ln))
            if other:
                sys.stderr.write(other)
                sys.stderr.flush()


def container_truncation(path: str | os.PathLike, meta: AudioInfo) -> str | None:
    """Detect truncation that libsndfile papers over.

    libsndfile silently shortens a WAV whose ``data`` chunk runs past the end of the file, and
    an Ogg stream cut mid-way decodes without error. We compare the declared WAV data size with
    the bytes present, and require an Ogg stream's last page to carry the end-of-stream flag.

    Returns:
        A reason string if the file is truncated, else ``None``.
    """
    ext = Path(path).suffix.lower()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if ext == ".wav" and meta.format == "WAV":
            head = f.read(1 << 16)
            pos = 12
            while pos + 8 <= len(head):
                cid, n = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
                if cid == b"data":
                    have = size - (pos + 8)
                    if 0 < n < 0xFFFFFFFF and have < n:  # 0 / 0xFFFFFFFF: streamed, length unknown
                        return f"truncated: WAV data chunk declares {n} bytes, file holds {have}"
                    return None
                pos += 8 + n + (n & 1)
        elif ext in (".ogg", ".oga", ".opus"):
            f.seek(max(0, size - (1 << 16)))
            tail = f.read()
            last = tail.rfind(b"OggS")
            if last < 0 or last + 5 >= len(tail) or not tail[last + 5] & 0x04:
                return "truncated: Ogg stream has no end-of-stream page"
    return None


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average channels: ``(C, N) -> (N,)``."""
    return audio.mean(axis=0, dtype=np.float32) if audio.shape[0] > 1 else audio[0]


@functools.lru_cache(maxsize=32)
def _resampler(orig_sr: int, new_sr: int):
    import torchaudio.transforms as T

    return T.Resample(orig_sr, new_sr)  # caches the sinc kernel per rate pair


def resample(audio: np.ndarray, orig_sr: int, new_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample float32 audio along the last axis with torchaudio's windowed-sinc resampler."""
    if orig_sr == new_sr:
        return audio
    import torch

    with torch.no_grad():
        out = _resampler(int(orig_sr), int(new_sr))(torch.from_numpy(np.ascontiguousarray(audio)))
    return out.numpy()


def check_signal(path: str | os.PathLike, audio: np.ndarray, silence_dbfs: float = -60.0) -> None:
    """Reject non-finite or silent audio (digital silence always; a peak at or below ``silence_dbfs``).

    Raises:
        AudioError: with a reason starting with ``silent`` or naming the NaN/inf samples.
    """
    finite = np.isfinite(audio)
    if not finite.all():
        raise AudioError(path, f"contains {int((~finite).sum())} NaN/inf samples")
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak == 0:
        raise AudioError(path, "silent (digital silence: every sample is 0)")
    if peak <= 10 ** (silence_dbfs / 20):
        raise AudioError(path, f"silent (peak {20 * np.log10(peak):.1f} dBFS <= {silence_dbfs:.0f} dBFS)")


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float | None = None,
    silence_dbfs: float | None = None,
) -> np.ndarray:
    """Decode, validate, downmix and resample one file: the single call every stage uses.

    Args:
        path: audio file in any decodable format, rate and channel count.
        sample_rate: output rate (24 kHz for MERT-v1).
        max_seconds: reject longer files before decoding.
        silence_dbfs: if set, reject files whose peak is at or below this level.

    Returns:
        float32 mono audio of shape ``(samples,)`` at ``sample_rate``.
    """
    audio, meta = decode(path, max_seconds)
    check_signal(path, audio, silence_dbfs if silence_dbfs is not None else -np.inf)
    mono = to_mono(audio)
    out = resample(mono, meta.sample_rate, sample_rate)
    return np.clip(out, -1.0, 1.0, out=out) if out.dtype == np.float32 else out.astype(np.float32)


def _short(e: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg[:limit]
