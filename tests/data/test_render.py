"""SoundFont rendering, room, loudness, and byte-deterministic audio files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from mert.data.audiofile import encode, fix_ogg_serial, ogg_crc
from mert.data.render import RenderError, Voice, fit_range, loudness_lufs, normalise_loudness, render, room
from mert.data.scores import Note

SR = 24000


def _f0(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.argmax(spec)) * sr / (8 * len(x))


@pytest.mark.parametrize("program, midi", [(73, 81), (40, 69), (0, 57)])  # flute, violin, piano
def test_a_note_sounds_at_its_pitch(program, midi):
    x = render([Voice([Note(0.0, 1.0, midi, 100)], program)], bpm=60, seconds=1.0, sr=SR).mean(1)
    f = _f0(x[2400:18000], SR)
    want = 440.0 * 2 ** ((midi - 69) / 12)
    assert abs(12 * np.log2(f / want)) < 0.5 or abs(12 * np.log2(f / want) - 12) < 0.5  # pitch, or its octave


def test_render_timing_follows_tempo_and_excerpt_start():
    notes = [Note(q, 0.5, 60, 100) for q in range(8)]
    x = render([Voice(notes, 0)], bpm=120, seconds=2.0, sr=SR, start_q=4.0).mean(1)  # quarters 4..7 at 0.5 s
    env = np.concatenate([[0.0], np.abs(x).reshape(-1, 240).max(1)])  # 10 ms frames, silence before
    onsets = np.flatnonzero(env[1:] > 3 * env[:-1] + 1e-4)
    assert x.shape == (2 * SR,)
    assert set(np.round(onsets[:4] / 50).astype(int)) == {0, 1, 2, 3}  # one onset per half second


def test_room_keeps_length_and_adds_decay():
    x = np.zeros((SR, 2), np.float32)
    x[100] = 1.0
    y = room(x, SR, rt60=0.5, wet=0.5, rng=np.random.default_rng(0))
    assert y.shape == x.shape
    tail = np.abs(y[100 + int(0.05 * SR) : 100 + int(0.15 * SR)]).max()
    late = np.abs(y[100 + int(0.6 * SR) :]).max()
    assert tail > 0 and late < tail / 10  # decays by > 20 dB within ~0.5 s


def test_loudness_normalisation_hits_the_target():
    x = render([Voice([Note(0.0, 3.0, 60, 100), Note(0.0, 3.0, 64, 90)], 48)], bpm=60, seconds=3.0, sr=SR)
    y, gain = normalise_loudness(x, SR, -14.0)
    assert abs(loudness_lufs(y, SR) + 14.0) < 0.1
    assert 0.05 < np.sqrt(np.mean(y**2)) < 0.3  # real-music levels
    with pytest.raises(RenderError, match="silent"):
        normalise_loudness(np.zeros((SR, 2), np.float32), SR, -14.0)


def test_fit_range_moves_by_octaves():
    notes = [Note(0, 1, 40, 80), Note(1, 1, 45, 80), Note(2, 1, 52, 80)]
    out = fit_range(notes, 60, 90)
    assert all(60 <= n.pitch <= 90 for n in out)
    assert all((a.pitch - b.pitch) % 12 == 0 for a, b in zip(out, notes))


def test_ogg_bytes_are_deterministic_and_valid():
    x = np.random.default_rng(0).standard_normal((SR, 2)).astype(np.float32) * 0.1
    a, b = encode(x, SR, "ogg", "VORBIS"), encode(x, SR, "ogg", "VORBIS")
    assert a == b
    y, sr = sf.read(io.BytesIO(a))
    assert sr == SR and y.shape == x.shape
    # our CRC is libogg's: recomputing an untouched page's CRC reproduces it
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="OGG", subtype="VORBIS")
    raw = buf.getvalue()
    n = raw[26]
    page = bytearray(raw[: 27 + n + sum(raw[27 : 27 + n])])
    crc, page[22:26] = bytes(page[22:26]), b"\0\0\0\0"
    assert ogg_crc(bytes(page)).to_bytes(4, "little") == crc
    with pytest.raises(ValueError, match="not an Ogg page"):
        fix_ogg_serial(b"RIFF....")
