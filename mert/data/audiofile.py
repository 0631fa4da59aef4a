"""Write audio files whose bytes depend only on the samples (so a seeded corpus is byte-identical every time).

libsndfile's Ogg writer draws each logical stream's serial number at random, so two encodes of the same samples
differ in 4 bytes per page (and in each page's CRC). :func:`fix_ogg_serial` rewrites the serial number to a value
derived from the payload and recomputes the CRCs (Ogg framing, RFC 3533). Float WAVs carry a ``PEAK`` chunk with a
timestamp, zeroed by :func:`zero_peak_timestamp`. FLAC and MP3 (LAME) output of soundfile is already deterministic.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from mert.utils.io import atomic_write

FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}


def _crc_table() -> np.ndarray:
    table = np.zeros(256, np.uint32)
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table[i] = r & 0xFFFFFFFF
    return table


_CRC = _crc_table().tolist()


def ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, initial value 0) of a page with its CRC field zeroed."""
    crc = 0
    for b in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[((crc >> 24) & 0xFF) ^ b]
    return crc


def fix_ogg_serial(data: bytes) -> bytes:
    """Set every page's stream serial number to one derived from the payload and recompute the page CRCs.

    Raises:
        ValueError: ``data`` is not a sequence of Ogg pages.
    """
    pages, pos = [], 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_seg = data[pos + 26]
        body = sum(data[pos + 27 : pos + 27 + n_seg])
        end = pos + 27 + n_seg + body
        pages.append(bytearray(data[pos:end]))
        pos = end
    serial = zlib.crc32(b"".join(bytes(p[27:]) for p in pages)).to_bytes(4, "little")
    out = []
    for p in pages:
        p[14:18] = serial
        p[22:26] = b"\0\0\0\0"
        p[22:26] = ogg_crc(bytes(p)).to_bytes(4, "little")
        out.append(bytes(p))
    return b"".join(out)


def encode(audio: np.ndarray, sr: int, ext: str, subtype: str | None = None) -> bytes:
    """``audio`` ((samples,) or (samples, channels) float) encoded as ``ext`` (wav, flac, ogg, mp3), deterministic."""
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=FORMATS[ext], subtype=subtype)
    data = buf.getvalue()
    if ext == "ogg":
        return fix_ogg_serial(data)
    return zero_peak_timestamp(data) if ext == "wav" else data


def zero_peak_timestamp(data: bytes) -> bytes:
    """Zero the creation time in a WAV file's ``PEAK`` chunk (libsndfile adds one to float WAVs)."""
    at = data.find(b"PEAK", 12, 4096)
    if at < 0:
        return data
    out = bytearray(data)
    out[at + 12 : at + 16] = b"\0\0\0\0"  # chunk id (4), size (4), version (4), timestamp (4)
    return bytes(out)


def write_audio(path: str | Path, audio: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    """Encode ``audio`` by the file extension of ``path`` and write it atomically."""
    path = Path(path)
    data = encode(audio, sr, path.suffix.lstrip(".").lower(), subtype)
    with atomic_write(path) as f:
        f.write(data)
    return path
