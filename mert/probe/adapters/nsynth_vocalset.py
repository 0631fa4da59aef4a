"""NSynth instrument family (11 classes) and pitch (128 classes); VocalSet technique (10) and singer (20).

NSynth (``root``): ``nsynth-{train,valid,test}/examples.json`` (note id -> ``instrument_family_str``,
``pitch``, ...) and ``nsynth-<split>/audio/<note id>.wav``; the official splits are used.

VocalSet (``root``): ``FULL/<singer>/<context>/<technique>/<singer>_<context>_<technique>_<vowel>.wav``
(the v1.2 archive unpacks to ``FULL/``). Technique: the 10 techniques MARBLE uses, singer-disjoint split;
test singers from ``root/splits/technique_test_singers.txt`` if present, else :data:`TECHNIQUE_TEST_SINGERS`
(UNVERIFIED against MARBLE's split). Singer: 20 singers, files split by a stable hash (70/15/15).
"""

from __future__ import annotations

import json
from pathlib import Path

from mert.probe.adapters.common import hash_split, require
from mert.probe.tasks import Example, Task, TaskError, validate

NSYNTH_FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
                   "synth_lead", "vocal")  # fmt: skip
TECHNIQUES = ("belt", "breathy", "inhaled", "lip_trill", "spoken", "straight", "trill", "trillo", "vibrato",
              "vocal_fry")  # fmt: skip
TECHNIQUE_TEST_SINGERS = ("f2", "f8", "m3", "m4", "m5")
TECHNIQUE_VALID_SINGERS = ("f7", "m11")
SINGERS = tuple([f"f{i}" for i in range(1, 10)] + [f"m{i}" for i in range(1, 12)])


def _nsynth(root: Path, field: str) -> list[Example]:
    examples = []
    for split in ("train", "valid", "test"):
        part = require(root / f"nsynth-{split}", f"NSynth {split} split")
        try:
            notes = json.loads(require(part / "examples.json", "NSynth metadata").read_text())
        except json.JSONDecodeError as e:
            raise TaskError(f"{part / 'examples.json'}: malformed JSON ({e})") from e
        for note, meta in sorted(notes.items()):
            path = part / "audio" / f"{note}.wav"
            if field == "pitch":
                target = int(meta["pitch"])
            elif meta["instrument_family_str"] in NSYNTH_FAMILIES:
                target = NSYNTH_FAMILIES.index(meta["instrument_family_str"])
            else:
                raise TaskError(f"{part / 'examples.json'}: {note}: unknown family {meta['instrument_family_str']!r}")
            examples.append(Example(path, split, target))
    return examples


def nsynth_instrument(root: Path) -> Task:
    """NSynth instrument family (accuracy); 4 s notes are one window each."""
    return validate(Task("nsynth-instrument", "multiclass", _nsynth(root, "family"), list(NSYNTH_FAMILIES), root=root))


def nsynth_pitch(root: Path) -> Task:
    """NSynth pitch, 128 MIDI classes (accuracy)."""
    classes = [str(m) for m in range(128)]
    return validate(Task("nsynth-pitch", "pitch", _nsynth(root, "pitch"), classes, root=root))


def _vocalset_files(root: Path) -> list[tuple[str, str, Path]]:
    """``(singer, technique folder, path)`` for every wav under ``FULL/``."""
    full = require(root / "FULL", "VocalSet FULL/ directory")
    out = []
    for path in sorted(full.rglob("*.wav")):
        parts = path.relative_to(full).parts  # singer / context / technique / file (some contexts lack a level)
        if len(parts) >= 3 and not path.name.startswith("."):
            out.append((parts[0].lower(), parts[-2].lower(), path))
    if not out:
        raise TaskError(f"{full}: no wav files in FULL/<singer>/<context>/<technique>/")
    return out


def _test_singers(root: Path) -> tuple[str, ...]:
    listed = root / "splits" / "technique_test_singers.txt"
    return tuple(listed.read_text().split()) if listed.is_file() else TECHNIQUE_TEST_SINGERS


def vocalset_technique(root: Path) -> Task:
    """VocalSet singing technique, 10 classes, singer-disjoint splits; 5 s windows."""
    test = _test_singers(root)
    examples = []
    for singer, technique, path in _vocalset_files(root):
        if technique in TECHNIQUES:
            split = "test" if singer in test else ("valid" if singer in TECHNIQUE_VALID_SINGERS else "train")
            examples.append(Example(path, split, TECHNIQUES.index(technique)))
    return validate(Task("vocalset-technique", "multiclass", examples, list(TECHNIQUES), window=5.0, root=root))


def vocalset_singer(root: Path) -> Task:
    """VocalSet singer identification, 20 classes, files split 70/15/15 by a stable hash; 5 s windows."""
    examples = []
    for singer, _, path in _vocalset_files(root):
        if singer in SINGERS:
            split = hash_split(path.name, valid=0.15, test=0.15, salt="vocalset")
            examples.append(Example(path, split, SINGERS.index(singer)))
    return validate(Task("vocalset-singer", "multiclass", examples, list(SINGERS), window=5.0, root=root))
