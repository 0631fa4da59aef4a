"""The synthetic demo corpus (``demo.source: synthetic``): seeded, music-like generated audio with labels.

Kept for fast unit tests (the default demo renders real scores: :mod:`mert.data.rendered`):
melodies over chord progressions in all 24 keys, several timbres (harmonic spectra with
envelopes, plucked strings, inharmonic bells), drum patterns at tempos from 60 to 180 BPM,
and mixes of these. Files come in several sample rates, channel counts and formats so the
ingestion path is exercised for real.

Outputs under ``OUT``::

    raw/            the pretraining corpus (wav/flac/ogg/mp3, 5-30 s, 16-48 kHz, mono/stereo)
    raw_labels.csv  what each raw clip contains (key, tempo, timbres)
    tasks/key/      probing task: CSV manifest path,split,label (24 keys, mir_eval names)
    tasks/timbre/   probing task: folder per class {train,valid,test}/<timbre>/*.wav
    tasks/pitch/    probing task: CSV manifest path,split,label (MIDI pitch of a single note)
    tasks/tempo/    probing task: CSV manifest path,split,bpm,beats (regression + beat times)
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf

from mert.data import shards as S
from mert.data.audiofile import write_audio
from mert.data.demo import DemoParams
from mert.utils.io import atomic_save_npy, atomic_write_text

PITCH_CLASSES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
KEYS = [f"{pc} {mode}" for mode in ("major", "minor") for pc in PITCH_CLASSES]  # mir_eval key names
MAJOR, MINOR = [0, 2, 4, 5, 7, 9, 11], [0, 2, 3, 5, 7, 8, 10]
# Progressions as scale degrees (0-based): I-V-vi-IV, I-IV-V-I, ii-V-I-I / i-VI-III-VII, i-iv-v-i.
PROGRESSIONS = {"major": [[0, 4, 5, 3], [0, 3, 4, 0], [1, 4, 0, 0]], "minor": [[0, 5, 2, 6], [0, 3, 4, 0]]}
TIMBRES = ["organ", "strings", "clarinet", "pluck", "bell", "brass"]
FORMATS = [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III"), ("wav", "FLOAT")]
SAMPLE_RATES = [16000, 22050, 24000, 32000, 44100, 48000]


def midi_hz(m: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(m) - 69) / 12)


def _envelope(n: int, sr: int, kind: str) -> np.ndarray:
    t = np.arange(n) / sr
    if kind in ("pluck", "bell"):
        return np.exp(-t * (3.0 if kind == "bell" else 6.0)) * np.minimum(1.0, t / 0.003)
    attack, release = (0.08, 0.1) if kind in ("strings", "brass") else (0.01, 0.05)
    env = np.minimum(1.0, t / attack) * np.minimum(1.0, (t[-1] - t + 1e-9) / release)
    return env * (0.85 + 0.15 * np.exp(-t * 4))


_TABLE = 2048


def _amps(timbre: str) -> np.ndarray:
    k = np.arange(1, 13, dtype=float)
    return {
        "organ": np.where(k <= 4, 1.0 / k, 0.0),
        "strings": 1.0 / k,
        "clarinet": np.where(k % 2 == 1, 1.0 / k, 0.02),
        "pluck": 1.0 / k**1.5,
        "brass": np.exp(-((k - 3) ** 2) / 8.0),
    }[timbre]


@functools.lru_cache(maxsize=128)
def _wavetable(timbre: str, n_partials: int) -> np.ndarray:
    """One period of ``timbre`` with its first ``n_partials`` harmonics (band-limited), float32."""
    theta = np.arange(_TABLE) / _TABLE
    amps = _amps(timbre)[:n_partials]
    k = np.arange(1, n_partials + 1)[:, None]
    x = (amps[:, None] * np.sin(2 * np.pi * k * theta + 0.7 * k)).sum(0)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def tone(freq: float, seconds: float, sr: int, timbre: str, rng: np.random.Generator) -> np.ndarray:
    """One note of ``timbre`` at ``freq`` Hz: partials (below Nyquist) shaped by an envelope.

    Harmonic timbres are read from a band-limited wavetable (fast); the bell's partials are
    inharmonic and summed directly; the pluck's bright attack decays towards its fundamental.
    """
    n = max(1, int(seconds * sr))
    t = np.arange(n, dtype=np.float32) / sr
    env = _envelope(n, sr, timbre).astype(np.float32)
    if timbre == "bell":
        ratios, amps = np.array([1.0, 2.76, 5.40, 8.93]), np.array([1.0, 0.6, 0.4, 0.25])
        keep = ratios * freq < sr / 2 * 0.95
        ph = rng.uniform(0, 2 * np.pi, (int(keep.sum()), 1))
        x = (amps[keep, None] * np.sin(2 * np.pi * freq * np.outer(ratios[keep], t) + ph)).sum(0)
        return (x * env / (np.abs(x).max() + 1e-9)).astype(np.float32)
    n_partials = int(max(1, min(12, np.floor(sr / 2 * 0.95 / freq))))
    inc = np.full(n, freq / sr, np.float64)
    if timbre in ("strings", "clarinet"):
        inc *= 1.0 + 0.004 * np.sin(2 * np.pi * 5.5 * t)  # vibrato
    phase = (np.cumsum(inc) + rng.uniform()) % 1.0
    idx = (phase * _TABLE).astype(np.int64) % _TABLE
    x = _wavetable(timbre, n_partials)[idx]
    if timbre == "pluck":  # higher partials decay faster, like a real string
        bright = np.exp(-t * 8.0)
        x = x * bright + _wavetable("organ", 1)[idx] * (1 - bright)
    return (x * env).astype(np.float32)


def drums(seconds: float, sr: int, bpm: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A kick/snare/hi-hat pattern at ``bpm``. Returns ``(audio, beat_times_s)``."""
    n = int(seconds * sr)
    out = np.zeros(n, np.float32)
    beat = 60.0 / bpm
    beats = np.arange(0.0, seconds - 0.05, beat)
    kick_t = np.arange(int(0.15 * sr)) / sr
    kick = np.sin(2 * np.pi * np.cumsum(50 + 100 * np.exp(-kick_t * 30)) / sr) * np.exp(-kick_t * 18)
    snare_len = int(0.12 * sr)
    hat_len = int(0.04 * sr)

    def put(at: float, hit: np.ndarray, gain: float) -> None:
        i = int(at * sr)
        m = min(len(hit), n - i)
        if m > 0:
            out[i : i + m] += gain * hit[:m]

    for b, t in enumerate(beats):
        put(t, kick if b % 2 == 0 else rng.standard_normal(snare_len) * np.exp(-np.arange(snare_len) / sr * 25), 0.8)
        for h in (0.0, 0.5):
            hat = np.diff(rng.standard_normal(hat_len + 1)) * np.exp(-np.arange(hat_len) / sr * 90)
            put(t + h * beat, hat, 0.15)
    return out, beats


def music(seconds: float, sr: int, key: str, bpm: float, timbres: list[str], rng, with_drums: bool) -> np.ndarray:
    """Chords + melody in ``key`` at ``bpm`` (one chord per bar of 4 beats), optionally with drums."""
    tonic, mode = key.split()
    root = 48 + PITCH_CLASSES.index(tonic)
    scale = np.array(MAJOR if mode == "major" else MINOR)
    prog = PROGRESSIONS[mode][rng.integers(len(PROGRESSIONS[mode]))]
    n = int(seconds * sr)
    out = np.zeros(n, np.float32)
    bar = 4 * 60.0 / bpm
    chord_timbre, melody_timbre = timbres[0], timbres[-1]
    for i, start in enumerate(np.arange(0.0, seconds, bar)):
        degree = prog[i % len(prog)]
        notes = [root + scale[(degree + s) % 7] + 12 * ((degree + s) // 7) for s in (0, 2, 4)]
        dur = min(bar, seconds - start)
        for m in notes:
            _add(out, tone(midi_hz(m), dur, sr, chord_timbre, rng), start, sr, 0.25)
        step = 60.0 / bpm / rng.choice([1, 2])
        for t in np.arange(start, start + dur - 1e-6, step):
            m = root + 12 + scale[rng.integers(7)] + 12 * rng.integers(0, 2)
            _add(out, tone(midi_hz(m), min(step * 0.95, seconds - t), sr, melody_timbre, rng), t, sr, 0.35)
    if with_drums:
        out += drums(seconds, sr, bpm, rng)[0] * 0.7
    return out


def _add(out: np.ndarray, x: np.ndarray, at: float, sr: int, gain: float) -> None:
    i = int(at * sr)
    m = min(len(x), len(out) - i)
    if m > 0:
        out[i : i + m] += gain * x[:m]


def _normalise(x: np.ndarray, rng) -> np.ndarray:
    return (x * (rng.uniform(0.3, 0.9) / (np.abs(x).max() + 1e-9))).astype(np.float32)


def _write(path: Path, audio: np.ndarray, sr: int, subtype: str, fmt: str) -> None:
    """Write ``audio`` of shape (samples,) or (samples, channels) atomically, byte-deterministically."""
    write_audio(path, audio, sr, subtype)


def _split(i: int, n: int) -> str:
    r = i / n
    return "train" if r < 0.7 else ("valid" if r < 0.85 else "test")


def _stereo(x: np.ndarray, rng) -> np.ndarray:
    pan = rng.uniform(0.3, 0.7)
    return np.stack([x * (1 - pan) * 2, x * pan * 2], axis=1).clip(-1, 1)


def generate_raw(out: Path, p: DemoParams, rng: np.random.Generator) -> list[dict]:
    """The pretraining corpus: ``p.n_clips`` mixed clips in ``out/raw``."""
    rows = []
    for i in range(p.n_clips):
        key = KEYS[i % len(KEYS)]  # every key appears
        bpm = float(rng.integers(60, 181))
        sr = int(SAMPLE_RATES[i % len(SAMPLE_RATES)])
        ext, subtype = FORMATS[i % len(FORMATS)]
        seconds = float(rng.uniform(p.min_seconds, p.max_seconds))
        timbres = list(rng.choice(TIMBRES, size=2, replace=False))
        kind = ["mix", "mix", "melody", "drums"][i % 4]
        if kind == "drums":
            x = drums(seconds, sr, bpm, rng)[0]
        else:
            x = music(seconds, sr, key, bpm, timbres, rng, with_drums=kind == "mix")
        x = _normalise(x, rng)
        stereo = i % 3 == 0
        name = f"clip-{i:04d}-{kind}.{ext}"
        _write(out / "raw" / name, _stereo(x, rng) if stereo else x, sr, subtype, ext)
        rows.append(dict(path=f"raw/{name}", kind=kind, key=key if kind != "drums" else "", bpm=bpm,
                         timbres=";".join(timbres) if kind != "drums" else "", seconds=round(seconds, 3),
                         sample_rate=sr, channels=2 if stereo else 1))  # fmt: skip
    if p.bad_files:
        write_bad_files(out / "raw", rng)
    return rows


def write_bad_files(raw: Path, rng) -> None:
    """Broken inputs a real corpus contains; ingestion must reject each with a clear reason."""
    (raw / "bad-empty.wav").write_bytes(b"")
    (raw / "bad-not-audio.mp3").write_text("this is a text file with an audio extension\n")
    buf = io.BytesIO()
    sf.write(buf, rng.uniform(-0.5, 0.5, 24000 * 4).astype(np.float32), 24000, format="FLAC", subtype="PCM_16")
    (raw / "bad-truncated.flac").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])


def _csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def generate_tasks(out: Path, p: DemoParams, rng: np.random.Generator) -> None:
    """Four small probing tasks with known answers (see the module docstring)."""
    sr, n, sec = 24000, p.task_clips, p.task_seconds
    key_rows, pitch_rows, tempo_rows = [], [], []
    for i in range(n):
        split = _split(i, n)
        key = KEYS[rng.integers(24)]
        x = music(sec, sr, key, float(rng.integers(70, 140)), list(rng.choice(TIMBRES[:4], 2)), rng, False)
        _write(out / "tasks/key/audio" / f"{i:04d}.wav", _normalise(x, rng), sr, "PCM_16", "wav")
        key_rows.append({"path": f"audio/{i:04d}.wav", "split": split, "label": key})

        timbre = TIMBRES[i % len(TIMBRES)]
        notes = rng.integers(48, 73, size=4)
        x = np.concatenate([tone(midi_hz(m), sec / 4, sr, timbre, rng) for m in notes])
        _write(out / "tasks/timbre" / split / timbre / f"{i:04d}.wav", _normalise(x, rng), sr, "PCM_16", "wav")

        midi = int(rng.integers(48, 72))
        x = tone(midi_hz(midi), sec, sr, TIMBRES[rng.integers(len(TIMBRES))], rng)
        _write(out / "tasks/pitch/audio" / f"{i:04d}.wav", _normalise(x, rng), sr, "PCM_16", "wav")
        pitch_rows.append({"path": f"audio/{i:04d}.wav", "split": split, "label": midi})

        bpm = float(rng.integers(60, 181))
        x, beats = drums(sec * 2, sr, bpm, rng)
        _write(out / "tasks/tempo/audio" / f"{i:04d}.wav", _normalise(x, rng), sr, "PCM_16", "wav")
        tempo_rows.append({"path": f"audio/{i:04d}.wav", "split": split, "bpm": bpm,
                           "beats": ";".join(f"{b:.4f}" for b in beats)})  # fmt: skip
    _csv(out / "tasks/key/manifest.csv", key_rows)
    _csv(out / "tasks/pitch/manifest.csv", pitch_rows)
    _csv(out / "tasks/tempo/manifest.csv", tempo_rows)


def generate(out: str | Path, params: DemoParams | None = None) -> Path:
    """Write the whole demo corpus to ``out``; the same params always give the same files."""
    p = params or DemoParams()
    out = Path(out)
    rng = np.random.default_rng(p.seed)
    rows = generate_raw(out, p, rng)
    _csv(out / "raw_labels.csv", rows)
    generate_tasks(out, p, np.random.default_rng(p.seed + 1))
    return out


def write_corpus_arrays(root: Path, items: Iterable[tuple[str, np.ndarray, str | None]], sample_rate: int,
                        per_shard: int, shard_dtype: str = "float32") -> list[S.Clip]:  # fmt: skip
    """Write in-memory clips as a corpus in the ingested layout (synthetic corpora of tests and benchmarks).

    Args:
        root: corpus directory (created).
        items: ``(source name, (n,) float32 mono audio, sha256 or None = the audio bytes' sha256)``, in order; the
            clip id is the sha256's first 16 characters.
        sample_rate: the audio's rate (``corpus.json``).
        per_shard: clips per shard, back to back.
        shard_dtype: ``float32``, or ``int16`` (quantised with ``mert.data.shards.quantize_int16``).

    Returns:
        The manifest's clips, in order.
    """
    (root / S.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    S.write_corpus_meta(root, sample_rate, shard_dtype)
    clips: list[S.Clip] = []
    parts: list[np.ndarray] = []

    def flush() -> None:
        if parts:
            audio = np.concatenate(parts)
            atomic_save_npy(
                root / S.SHARD_DIR / clips[-1].shard, S.quantize_int16(audio) if shard_dtype == "int16" else audio
            )
            parts.clear()

    for i, (source, audio, sha) in enumerate(items):
        if i % per_shard == 0:
            flush()
        sha = sha or hashlib.sha256(audio.tobytes()).hexdigest()
        n = len(audio)
        offset = sum(len(p) for p in parts)
        clips.append(S.Clip(sha[:16], source, sha, n / sample_rate, sample_rate, 1, "WAV", S.shard_name(i // per_shard),
                          offset, n))  # fmt: skip
        parts.append(audio)
    flush()
    S.write_manifest(root, clips)
    return clips
