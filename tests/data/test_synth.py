"""The demo corpus generator: deterministic, varied, labelled."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from mert.data.synth import KEYS, DemoParams, drums, generate, midi_hz, tone


def test_demo_corpus_is_varied_and_labelled(demo_dir: Path):
    raw = sorted((demo_dir / "raw").iterdir())
    good = [p for p in raw if not p.name.startswith("bad-")]
    assert len(good) == 8 and len([p for p in raw if p.name.startswith("bad-")]) == 3
    infos = [sf.info(str(p)) for p in good]
    assert len({i.samplerate for i in infos}) >= 4
    assert {i.channels for i in infos} == {1, 2}
    assert {p.suffix for p in good} >= {".wav", ".flac", ".ogg", ".mp3"}
    assert all(5.0 <= i.duration <= 8.1 for i in infos)
    with open(demo_dir / "raw_labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["key"] in KEYS or r["kind"] == "drums" for r in rows)


def test_probe_tasks_have_every_split(demo_dir: Path):
    for task in ("key", "pitch", "tempo"):
        with open(demo_dir / "tasks" / task / "manifest.csv") as f:
            rows = list(csv.DictReader(f))
        assert {r["split"] for r in rows} == {"train", "valid", "test"}
        assert all((demo_dir / "tasks" / task / r["path"]).exists() for r in rows)
    splits = {p.name for p in (demo_dir / "tasks/timbre").iterdir()}
    assert splits == {"train", "valid", "test"}


def test_generation_is_deterministic(tmp_path: Path):
    p = DemoParams(seed=3, source="synthetic", n_clips=2, min_seconds=5, max_seconds=5.5, task_clips=12,
                   task_seconds=1.0, bad_files=False)  # fmt: skip
    a, b = generate(tmp_path / "a", p), generate(tmp_path / "b", p)
    for f in sorted((a / "raw").iterdir()):
        assert f.read_bytes() == (b / "raw" / f.name).read_bytes()


def test_tone_has_the_requested_pitch_and_drums_the_requested_tempo():
    rng = np.random.default_rng(0)
    x = tone(midi_hz(69), 1.0, 24000, "organ", rng)
    assert abs(np.argmax(np.abs(np.fft.rfft(x))) - 440) <= 1  # 1 s -> 1 Hz bins
    y, beats = drums(4.0, 24000, 120.0, rng)
    assert np.allclose(np.diff(beats), 0.5) and np.abs(y).max() > 0
