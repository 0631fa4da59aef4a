"""The rendered demo corpus: real scores, stratified piece-disjoint probing tasks, labels checked by oracles."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mert.data.demo import DemoParams, generate
from mert.data.rendered import KEYS, TASK_SECONDS
from mert.data.scores import BACH, PITCH_CLASSES

PARAMS = DemoParams(seed=5, n_clips=4, min_seconds=5.0, max_seconds=8.0, task_clips=48, workers=1)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("rendered") / "demo", PARAMS)


def test_raw_corpus_is_real_music_at_real_levels(rendered: Path):
    raw = sorted((rendered / "raw").iterdir())
    good = [p for p in raw if not p.name.startswith("bad-")]
    assert len(good) == 4 and len(raw) == 7  # + the three broken files for the quarantine
    assert {p.suffix for p in good} == {".wav", ".flac", ".ogg", ".mp3"}
    labels = _rows(rendered / "raw_labels.csv")
    assert len(labels) == 4 and all(r["source"] and r["programs"] for r in labels)
    assert not any(BACH.search(r["source"]) for r in labels)
    for p in good:
        x, _ = sf.read(p, always_2d=True)
        assert 0.03 < np.sqrt(np.mean(x**2)) < 0.35  # about -18..-10 LUFS, not the old RMS ~0.02
    assert {r["collection"] for r in _rows(rendered / "SOURCES.csv")} >= {r["collection"] for r in labels}
    assert all(r["licence"] for r in _rows(rendered / "SOURCES.csv"))


@pytest.mark.parametrize("task", ["key", "instrument", "pitch", "tempo"])
def test_tasks_are_stratified_and_piece_disjoint(rendered: Path, task: str):
    rows = _rows(rendered / "tasks" / task / "manifest.csv")
    assert Counter(r["split"] for r in rows) == {"train": 24, "valid": 7, "test": 17}
    for r in rows[:5]:
        info = sf.info(rendered / "tasks" / task / r["path"])
        assert info.samplerate == 24000 and abs(info.duration - TASK_SECONDS[task]) < 0.01
    if task != "tempo":
        train = Counter(r["label"] for r in rows if r["split"] == "train")
        assert max(train.values()) - min(train.values()) <= 1  # every class equally often in train
    if task == "key":
        assert {r["label"] for r in rows} == set(KEYS)  # all 24 keys
    sources = {r["path"]: r["source"] for r in _rows(rendered / "tasks" / task / "sources.csv")}
    if task != "pitch":
        by_split = {s: {sources[r["path"]] for r in rows if r["split"] == s} for s in ("train", "valid", "test")}
        assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["valid"])
        assert not (by_split["valid"] & by_split["test"])
        pretrain = {r["source"] for r in _rows(rendered / "raw_labels.csv")}
        assert not (pretrain & set(sources.values()))  # probing pieces never seen in pretraining
        assert not any(BACH.search(s) for s in sources.values())


def _chroma(path: Path) -> np.ndarray:
    import librosa

    x, sr = sf.read(path, dtype="float32")
    return librosa.feature.chroma_cqt(y=x, sr=sr)


def test_pitch_labels_match_the_audio(rendered: Path):
    rows = _rows(rendered / "tasks/pitch/manifest.csv")
    hits = [PITCH_CLASSES[int(_chroma(rendered / "tasks/pitch" / r["path"])[:, :40].mean(1).argmax())] == r["label"]
            for r in rows]  # fmt: skip
    assert np.mean(hits) >= 0.9


def test_key_labels_match_the_audio(rendered: Path):
    """Krumhansl-Kessler key finding on chroma (an independent oracle) agrees far above chance (~0.06)."""
    import mir_eval

    major = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
    minor = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
    scores = []
    for r in _rows(rendered / "tasks/key/manifest.csv"):
        c = _chroma(rendered / "tasks/key" / r["path"]).mean(1)
        guesses = [(np.corrcoef(np.roll(t, k), c)[0, 1], f"{PITCH_CLASSES[k]} {m}")
                   for m, t in (("major", major), ("minor", minor)) for k in range(12)]  # fmt: skip
        scores.append(mir_eval.key.weighted_score(r["label"], max(guesses)[1]))
    assert np.mean(scores) > 0.35


def test_beat_times_follow_the_tempo(rendered: Path):
    rows = _rows(rendered / "tasks/tempo/manifest.csv")
    for r in rows:
        beats = np.array([float(b) for b in r["beats"].split(";")])
        assert len(beats) >= 4 and beats.min() >= 0 and beats.max() < TASK_SECONDS["tempo"]
        assert np.allclose(np.diff(beats), 60.0 / float(r["bpm"]), atol=2e-3)  # a beat every 60/bpm s
    bpms = [float(r["bpm"]) for r in rows]
    assert min(bpms) >= 60 and max(bpms) < 180 and len({int(b // 10) for b in bpms}) == 12  # all 12 tempo bins


def test_same_params_same_bytes_whatever_the_worker_count(tmp_path: Path):
    p = DemoParams(seed=2, n_clips=5, min_seconds=5.0, max_seconds=6.0, task_clips=24, workers=1)
    a = generate(tmp_path / "a", p)
    b = generate(tmp_path / "b", DemoParams(**{**vars(p), "workers": 2}))
    files = sorted(f.relative_to(a) for f in a.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(b) for f in b.rglob("*") if f.is_file())
    assert {f.suffix for f in files} >= {".ogg", ".mp3", ".flac", ".wav", ".csv"}
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
