"""Render note events to audio with a General MIDI SoundFont, pip-only: ``tinysoundfont`` + ``TimGM6mb.sf2``.

``tinysoundfont`` (a self-contained wheel; install it with ``pip install --no-deps tinysoundfont`` because its
``pyaudio`` dependency is only for live playback) synthesises with the General MIDI SoundFont that ``pretty_midi``
ships inside its package (``TimGM6mb.sf2``, 5.9 MB, by Tim Brechbill, GPL-2.0 as Debian packages it). Then a
seeded room (a decaying-noise impulse response, RT60 0.2-1.5 s) and loudness normalisation to a target integrated
loudness (ITU-R BS.1770 via ``pyloudnorm``; real-music levels: about -14 LUFS).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mert.data.scores import Note

GM_FAMILIES: dict[str, tuple[int, ...]] = {
    # family -> General MIDI programs (0-based) used from it; ranges of 8 as the GM spec groups them.
    "piano": (0, 1, 2, 4),
    "chromatic_percussion": (8, 11, 12, 13),  # celesta, vibraphone, marimba, xylophone
    "organ": (16, 19, 21),  # drawbar, church organ, accordion
    "guitar": (24, 25, 26),  # nylon, steel, jazz
    "bass": (32, 33, 35),  # acoustic, finger, fretless
    "strings": (40, 41, 42),  # violin, viola, cello
    "brass": (56, 57, 60),  # trumpet, trombone, French horn
    "reed": (65, 68, 70, 71),  # alto sax, oboe, bassoon, clarinet
    "pipe": (72, 73, 74, 75),  # piccolo, flute, recorder, pan flute
}
FAMILY_RANGE: dict[str, tuple[int, int]] = {
    # comfortable MIDI range per family (melodies are moved by octaves into it)
    "piano": (40, 88), "chromatic_percussion": (60, 96), "organ": (40, 84), "guitar": (40, 79), "bass": (28, 55),
    "strings": (43, 88), "brass": (45, 79), "reed": (46, 84), "pipe": (60, 96),
}  # fmt: skip
ENSEMBLES: dict[str, tuple[int, ...]] = {
    # an instrumentation for polyphonic pieces, top part first; parts beyond the list reuse the last program
    "string_quartet": (40, 40, 41, 42),
    "string_orchestra": (48, 48, 48, 48),
    "choir": (52, 52, 52, 52),
    "organ": (19,),
    "piano": (0,),
    "winds": (73, 68, 71, 70, 60),
    "brass": (56, 56, 60, 57, 58),
    "guitar_and_bass": (25, 24, 24, 32),
    "mixed": (73, 40, 71, 42),
}
SOUNDFONT = "TimGM6mb.sf2"


class RenderError(ValueError):
    """A render that cannot be used (e.g. silent); the message says why."""


def soundfont_path() -> Path:
    """The General MIDI SoundFont shipped inside ``pretty_midi``."""
    import pretty_midi

    path = Path(pretty_midi.__file__).parent / SOUNDFONT
    if not path.exists():
        raise FileNotFoundError(f"{path}: the SoundFont that pretty_midi ships is missing (reinstall pretty_midi)")
    return path


@functools.lru_cache(maxsize=4)
def _soundfont_bytes() -> bytes:
    return soundfont_path().read_bytes()


@dataclass(frozen=True)
class Voice:
    """A part to render: its notes, GM program, MIDI channel volume (0-127) and pan (0 left - 127 right)."""

    notes: list[Note]
    program: int
    volume: int = 100
    pan: int = 64


def render(voices: list[Voice], bpm: float, seconds: float, sr: int = 24000, start_q: float = 0.0,
           tail: float = 0.0) -> np.ndarray:  # fmt: skip
    """Synthesise ``voices`` from quarter-note position ``start_q`` for ``seconds`` at ``bpm`` quarter notes/min.

    Args:
        voices: at most 15 parts (channel 9, GM drums, is skipped).
        bpm: tempo in quarter notes per minute.
        seconds: output length (notes sounding at the end are cut; ``tail`` extra seconds let them ring).
        sr: sample rate in Hz.
        start_q: excerpt start in quarter notes; notes that started before it are not played.
        tail: extra seconds rendered after the last note-off of the excerpt (release, reverb room).

    Returns:
        (samples, 2) float32 stereo at ``sr``.
    """
    try:
        import tinysoundfont
    except ImportError as e:  # not a pyproject dependency: its pyaudio requirement needs system headers
        raise ImportError("rendering needs tinysoundfont: pip install --no-deps tinysoundfont") from e

    if len(voices) > 15:
        raise ValueError(f"at most 15 voices, got {len(voices)}")
    synth = tinysoundfont.Synth(samplerate=sr)
    sfid = synth.sfload(_soundfont_bytes())
    spq = 60.0 / bpm  # seconds per quarter note
    events = []  # (sample, order, kind, channel, key, velocity); note-offs (order 0) before note-ons at a sample
    for i, v in enumerate(voices):
        chan = i if i < 9 else i + 1
        synth.program_select(chan, sfid, 0, int(v.program))
        synth.control_change(chan, 7, int(v.volume))
        synth.control_change(chan, 10, int(v.pan))
        for n in v.notes:
            t0 = (n.onset - start_q) * spq
            if t0 < 0 or t0 >= seconds:
                continue
            t1 = min(t0 + n.duration * spq, seconds)
            events.append((int(round(t0 * sr)), 1, chan, n.pitch, n.velocity))
            events.append((int(round(t1 * sr)), 0, chan, n.pitch, 0))
    events.sort()
    total = int(round((seconds + tail) * sr))
    out, pos = [], 0
    for at, is_on, chan, key, vel in events:
        if at > pos:
            out.append(_generate(synth, at - pos))
            pos = at
        if is_on:
            synth.noteon(chan, key, max(1, min(127, vel)))
        else:
            synth.noteoff(chan, key)
    if total > pos:
        out.append(_generate(synth, total - pos))
    return np.concatenate(out)[:total] if out else np.zeros((total, 2), np.float32)


def _generate(synth, n: int) -> np.ndarray:
    return np.frombuffer(synth.generate(n), dtype=np.float32).reshape(-1, 2).copy()


def room(x: np.ndarray, sr: int, rt60: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """A simple seeded room: convolve with exponentially decaying stereo noise (RT60 ``rt60`` s), mix ``wet``.

    Args:
        x: (samples, 2) dry stereo.
        sr: sample rate in Hz.
        rt60: time in seconds for the impulse response to decay by 60 dB.
        wet: 0-1 share of the reverberant signal.
        rng: draws the impulse response's noise.
    """
    from scipy.signal import fftconvolve

    n = max(1, int(rt60 * sr))
    t = np.arange(n) / sr
    decay = np.exp(-t * (3.0 * math.log(10) / rt60))  # -60 dB at rt60
    ir = rng.standard_normal((n, 2)) * decay[:, None]
    ir[: int(0.005 * sr)] = 0.0  # 5 ms pre-delay
    ir /= np.sqrt((ir**2).sum(0, keepdims=True)) + 1e-12  # unit energy per channel
    rev = fftconvolve(x, ir, axes=0)[: len(x)]
    return ((1 - wet) * x + wet * rev).astype(np.float32)


def loudness_lufs(x: np.ndarray, sr: int) -> float:
    """Integrated loudness (ITU-R BS.1770-4, LUFS) of (samples, channels) audio (``pyloudnorm``); -inf if silent."""
    import pyloudnorm

    if len(x) < int(0.4 * sr) or float(np.abs(x).max()) == 0.0:
        return -math.inf
    return float(pyloudnorm.Meter(sr).integrated_loudness(x.astype(np.float64)))


def normalise_loudness(x: np.ndarray, sr: int, target_lufs: float, peak: float = 0.98) -> tuple[np.ndarray, float]:
    """Scale ``x`` to ``target_lufs`` (then down, if needed, so the peak stays under ``peak``).

    Returns:
        ``(audio, gain_db)``.

    Raises:
        RenderError: silent input (no loudness to measure).
    """
    lufs = loudness_lufs(x, sr)
    if not math.isfinite(lufs) or lufs < -70:
        raise RenderError(f"silent render (loudness {lufs:.1f} LUFS)")
    gain = 10 ** ((target_lufs - lufs) / 20)
    top = float(np.abs(x).max()) * gain
    if top > peak:
        gain *= peak / top
    return (x * gain).astype(np.float32), 20 * math.log10(gain)


def fit_range(notes: list[Note], lo: int, hi: int) -> list[Note]:
    """Move ``notes`` by whole octaves so their median pitch falls inside ``[lo, hi]``, clipping outliers by octaves."""
    if not notes:
        return notes
    med = float(np.median([n.pitch for n in notes]))
    centre = (lo + hi) / 2
    shift = 12 * round((centre - med) / 12)
    out = []
    for n in notes:
        p = n.pitch + shift
        while p < lo:
            p += 12
        while p > hi:
            p -= 12
        out.append(Note(n.onset, n.duration, p, n.velocity))
    return out


def transpose(notes: list[Note], semitones: int) -> list[Note]:
    """``notes`` moved by ``semitones`` (kept inside MIDI 0-127 by octaves)."""
    out = []
    for n in notes:
        p = n.pitch + semitones
        p = p + 12 if p < 0 else (p - 12 if p > 127 else p)
        out.append(Note(n.onset, n.duration, p, n.velocity))
    return out
