"""GTZAN genre (10 classes, accuracy) and GTZAN-Rhythm beat tracking (beat F-measure).

Layout (``root``):

* ``genres/<genre>/<genre>.000NN.{wav,au}`` (the original archive; the Kaggle copy's ``genres_original/`` works);
* split lists ``{train,valid,test}_filtered.txt`` (lines like ``blues/blues.00000.wav``) in ``root`` or
  ``root/splits``: the fault-filtered split (Kereliuk et al. 2015) used by MARBLE. Without them a
  deterministic hashed 80/10/10 split is used and logged (numbers are then not comparable to MARBLE);
* GTZAN-Rhythm beats: ``jams/<genre>.000NN.wav.jams`` (JAMS JSON, ``beat`` namespace) or
  ``beats/<genre>.000NN.beats`` (one ``time [beat number]`` per line).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mert.probe.adapters.common import audio_by_stem, hash_split, log, read_split_lists, require
from mert.probe.tasks import Example, Task, TaskError, validate

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


def _audio_dir(root: Path) -> Path:
    for name in ("genres", "genres_original", "Data/genres_original"):
        if (root / name).is_dir():
            return root / name
    raise TaskError(f"{root}: no genres/<genre>/ directory (GTZAN layout)")


def _splits(root: Path) -> dict[str, str] | None:
    for d in (root, root / "splits"):
        lists = read_split_lists(d, "{split}_filtered.txt")
        if lists is not None:
            return {Path(k).stem: v for k, v in lists.items()}  # "blues.00000"
    log.warning("%s: no *_filtered.txt split lists; using a hashed 80/10/10 split (not MARBLE's)", root)
    return None


def _split_of(stem: str, lists: dict[str, str] | None) -> str | None:
    if lists is None:
        return hash_split(stem, valid=0.1, test=0.1, salt="gtzan")
    return lists.get(stem)  # files outside the filtered lists are the faulty ones: dropped


def gtzan_genre(root: Path) -> Task:
    """GTZAN genre classification (accuracy over 10 genres)."""
    audio, lists = _audio_dir(root), _splits(root)
    examples = []
    for stem, path in audio_by_stem(audio).items():
        genre = stem.split(".")[0]
        split = _split_of(stem, lists)
        if genre in GENRES and split:
            examples.append(Example(path, split, GENRES.index(genre)))
    return validate(Task("gtzan-genre", "multiclass", examples, list(GENRES), root=root))


def read_beats(path: Path) -> np.ndarray:
    """Beat times (s) from a JAMS file (``beat`` namespace) or a ``.beats`` text file."""
    if path.suffix == ".jams":
        jam = json.loads(path.read_text())
        for ann in jam.get("annotations", []):
            if ann.get("namespace") == "beat":
                data = ann["data"]
                rows = data if isinstance(data, list) else [dict(zip(data, v)) for v in zip(*data.values())]
                return np.array(sorted(float(r["time"]) for r in rows))
        raise TaskError(f"{path}: no 'beat' annotation in this JAMS file")
    return np.array([float(line.split()[0]) for line in path.read_text().splitlines() if line.strip()])


def _beat_files(root: Path) -> dict[str, Path]:
    files = {p.name.split(".wav")[0].removesuffix(".jams"): p for p in sorted((root / "jams").glob("*.jams"))}
    files |= {p.stem: p for p in sorted((root / "beats").glob("*.beats"))} if (root / "beats").is_dir() else {}
    if not files:
        raise TaskError(f"{root}: no jams/*.jams or beats/*.beats (GTZAN-Rhythm annotations)")
    return files


def gtzan_rhythm(root: Path) -> Task:
    """GTZAN-Rhythm beat tracking on GTZAN audio (frame-level, beat F-measure)."""
    audio, lists, beats = _audio_dir(root), _splits(root), _beat_files(root)
    examples = []
    for stem, path in audio_by_stem(audio).items():
        split = _split_of(stem, lists)
        if stem in beats and split:
            examples.append(Example(path, split, read_beats(require(beats[stem], "beat annotation"))))
    return validate(Task("gtzan-rhythm", "beats", examples, [], root=root))
