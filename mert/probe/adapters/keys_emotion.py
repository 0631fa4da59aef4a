"""GiantSteps key (weighted key accuracy) and EmoMusic (R2 of static valence/arousal).

GiantSteps (``root``): ``giantsteps-key-dataset/`` (test: ``audio/<id>.LOFI.mp3`` +
``annotations/key/<id>.LOFI.key``) and ``giantsteps-mtg-key-dataset/`` (train/valid: ``audio/<id>.LOFI.mp3`` +
``annotations/annotations.txt``, tab-separated ``ID  MANUAL KEY  C ...``, or ``annotations/key/*.key``);
as in MARBLE, the MTG set trains (a hashed 10% validates) and the original set tests. Keys are mapped to
mir_eval names (enharmonics folded, e.g. ``A# minor`` -> ``Bb minor``); ambiguous or modal labels are dropped.

EmoMusic (``root``): ``clips_45seconds/<song_id>.mp3``, ``annotations/static_annotations.csv``
(``song_id, mean_arousal, std_arousal, mean_valence, std_valence``) and, if present,
``annotations/songs_info.csv`` whose ``Mediaeval 2013 set`` column (development / evaluation) gives
train+valid / test; otherwise a hashed split. Targets: ``valence``, ``arousal``; 5 s windows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mert.probe.adapters.common import audio_by_stem, hash_split, require
from mert.probe.tasks import KEYS, Example, Task, TaskError, validate

PITCH = {"C": 0, "C#": 1, "DB": 1, "D": 2, "D#": 3, "EB": 3, "E": 4, "FB": 4, "E#": 5, "F": 5, "F#": 6, "GB": 6,
         "G": 7, "G#": 8, "AB": 8, "A": 9, "A#": 10, "BB": 10, "B": 11, "CB": 11, "B#": 0}  # fmt: skip


def normalise_key(text: str) -> str | None:
    """``"a# Minor"`` -> ``"Bb minor"`` (a :data:`KEYS` name); None for anything else (ambiguous, modal, empty)."""
    parts = text.replace("\t", " ").strip().split()
    if len(parts) != 2 or parts[1].lower() not in ("major", "minor") or parts[0].upper() not in PITCH:
        return None
    return KEYS[PITCH[parts[0].upper()] + (12 if parts[1].lower() == "minor" else 0)]


def _key_files(directory: Path) -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in sorted(directory.glob("*.key"))}


def _mtg_keys(root: Path) -> dict[str, str]:
    table = root / "annotations" / "annotations.txt"
    if table.is_file():
        with open(table, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        return {r[0].strip(): r[1].strip() for r in rows[1:] if len(r) > 1}
    return {k.split(".")[0]: v for k, v in _key_files(require(root / "annotations" / "key", "key labels")).items()}


def giantsteps_key(root: Path) -> Task:
    """GiantSteps-MTG key (train/valid) + GiantSteps key (test), 24 classes."""
    test_root = require(root / "giantsteps-key-dataset", "GiantSteps key test set")
    train_root = require(root / "giantsteps-mtg-key-dataset", "GiantSteps-MTG key training set")
    examples = []
    test_audio = audio_by_stem(require(test_root / "audio", "audio"))
    for stem, label in _key_files(require(test_root / "annotations" / "key", "key labels")).items():
        key = normalise_key(label)
        if key and stem in test_audio:
            examples.append(Example(test_audio[stem], "test", KEYS.index(key)))
    train_audio = {s.split(".")[0]: p for s, p in audio_by_stem(require(train_root / "audio", "audio")).items()}
    for track, label in _mtg_keys(train_root).items():
        key = normalise_key(label)
        if key and track in train_audio:
            split = hash_split(track, valid=0.1, salt="giantsteps")
            examples.append(Example(train_audio[track], split, KEYS.index(key)))
    return validate(Task("giantsteps-key", "key", examples, list(KEYS), root=root))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def _emo_sets(root: Path) -> dict[str, str]:
    info = root / "annotations" / "songs_info.csv"
    if not info.is_file():
        return {}
    rows = _read_csv(info)
    column = next((c for c in (rows[0] if rows else {}) if "set" in c.lower()), None)
    return {r["song_id"]: r[column].lower() for r in rows} if column else {}


def emomusic(root: Path) -> Task:
    """EmoMusic static valence/arousal regression (R2), 45 s clips in 5 s windows."""
    rows = _read_csv(require(root / "annotations" / "static_annotations.csv", "static annotations"))
    audio = audio_by_stem(require(root / "clips_45seconds", "45 s clips"))
    sets = _emo_sets(root)
    examples = []
    for r in rows:
        song = r["song_id"]
        if song not in audio:
            continue
        try:
            target = np.array([float(r["mean_valence"]), float(r["mean_arousal"])], np.float32)
        except (KeyError, ValueError) as e:
            raise TaskError(f"{root}/annotations/static_annotations.csv: song {song}: bad annotation ({e})") from e
        if sets.get(song, "").startswith("eval"):
            split = "test"
        elif sets:
            split = hash_split(song, valid=0.15, salt="emomusic")
        else:
            split = hash_split(song, valid=0.12, test=0.2, salt="emomusic")
        examples.append(Example(audio[song], split, target))
    return validate(Task("emomusic", "regression", examples, ["valence", "arousal"], window=5.0, root=root))
