"""Probing tasks: what a dataset directory holds, validated before any feature extraction.

A :class:`Task` is a list of :class:`Example` (audio path, split, target) plus what the targets mean.
Two generic layouts are read here (the 14 MARBLE datasets' native layouts are in
:mod:`mert.probe.adapters`):

* folder per class: ``ROOT/{train,valid,test}/<label>/<audio file>`` (multi-class);
* a CSV manifest ``ROOT/manifest.csv`` (or ``ROOT/*.csv`` when there is exactly one) with columns
  ``path,split,...``: ``label`` (multi-class), ``labels`` (multi-label, ``;``-separated), ``beats``
  (beat times in seconds, ``;``-separated), any other column numeric (regression targets).
  ``path`` is relative to ``ROOT``. Kind inference: see :func:`infer_kind`.

Task kinds: ``multiclass``, ``key`` (24 major/minor keys in mir_eval names; weighted key score),
``pitch`` (128 MIDI classes), ``multilabel``, ``regression``, ``beats``, ``separation``. ``key`` and
``pitch`` have a fixed vocabulary, so a class absent from ``train`` is allowed there; for the other
class tasks a label that never occurs in ``train`` is an error (the probe could never predict it).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mert.audio import AUDIO_LIKE

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
KINDS = ("multiclass", "key", "pitch", "multilabel", "regression", "beats", "separation")
CLASS_KINDS = ("multiclass", "key", "pitch")
KEYS = tuple(f"{t} {m}" for m in ("major", "minor") for t in "C C# D Eb E F F# G Ab A Bb B".split())
"""The 24 keys, spelled as mir_eval expects (``mir_eval.key.validate_key``)."""
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
                 "dev": "valid", "test": "test", "testing": "test", "eval": "test"}  # fmt: skip


class TaskError(ValueError):
    """A task directory or manifest that cannot be probed; the message names the file (and row)."""


@dataclass(frozen=True)
class Example:
    """One audio clip of a task.

    Attributes:
        path: audio file (absolute).
        split: ``train``, ``valid`` or ``test``.
        target: class index (int), multi-hot / regression vector (``np.ndarray``), beat times in seconds
            (``np.ndarray``) or, for separation, a dict ``source name -> stem path``.
        start: offset in seconds of the excerpt within ``path`` (0 = start of file).
        duration: excerpt length in seconds (``None`` = to the end of the file).
    """

    path: Path
    split: str
    target: Any
    start: float = 0.0
    duration: float | None = None

    @property
    def key(self) -> str:
        """Identifies the excerpt in the feature cache."""
        return f"{self.path}|{self.start:.3f}|{self.duration}"


@dataclass
class Task:
    """A validated probing task.

    Attributes:
        name: short name (directory name or MARBLE task name).
        kind: one of :data:`KINDS`.
        examples: every example, all splits.
        classes: class names (class tasks, multi-label tag names, regression column names, separation
            source names; empty for beats).
        window: seconds per window for clip-level features (``None``: the params default).
        root: the dataset directory.
    """

    name: str
    kind: str
    examples: list[Example]
    classes: list[str] = field(default_factory=list)
    window: float | None = None
    root: Path | None = None

    def split(self, split: str) -> list[Example]:
        return [e for e in self.examples if e.split == split]

    def counts(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in SPLITS}


def normalise_split(value: str, where: str) -> str:
    split = SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise TaskError(f"{where}: unknown split {value!r} (expected one of {list(SPLITS)})")
    return split


def validate(task: Task) -> Task:
    """Check a task before extraction: every split has files, classes are seen in train, targets are sane.

    Raises:
        TaskError: naming the task root and what is wrong.
    """
    where = str(task.root or task.name)
    if task.kind not in KINDS:
        raise TaskError(f"{where}: unknown task kind {task.kind!r} (expected one of {list(KINDS)})")
    counts = task.counts()
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise TaskError(f"{where}: split(s) {empty} have no files (counts {counts})")
    if task.kind in ("multiclass", "multilabel"):
        _check_classes_in_train(task, where)
    if task.kind == "multilabel":
        _check_multilabel(task, where)
    return task


def _check_classes_in_train(task: Task, where: str) -> None:
    train = Counter()
    for e in task.split("train"):
        train.update([e.target] if task.kind == "multiclass" else np.flatnonzero(e.target).tolist())
    for split in ("valid", "test"):
        seen = Counter()
        for e in task.split(split):
            seen.update([e.target] if task.kind == "multiclass" else np.flatnonzero(e.target).tolist())
        missing = sorted(task.classes[c] for c in seen if c not in train)
        if missing:
            hint = ""
            if task.kind == "multiclass" and all(c.isdigit() and int(c) < 128 for c in task.classes):
                hint = " (if these are MIDI pitches, use task kind 'pitch': a fixed 128-class vocabulary)"
            raise TaskError(f"{where}: label(s) {missing} occur in {split} but never in train{hint}")
    if task.kind == "multiclass":
        empty = [c for i, c in enumerate(task.classes) if train[i] == 0]
        if empty:
            raise TaskError(f"{where}: class(es) {empty} have no training files")


def _check_multilabel(task: Task, where: str) -> None:
    y = np.stack([e.target for e in task.split("train")])  # (N, C)
    if y.shape[1] == 0:
        raise TaskError(f"{where}: multi-label task without any tag")


# ----------------------------------------------------------------------------------------------- folder layout
def _audio_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_LIKE)


def load_folder_task(root: Path, name: str | None = None) -> Task:
    """``ROOT/{train,valid,test}/<label>/<file>`` -> a multi-class task (split names may be aliases)."""
    split_dirs: dict[str, Path] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        split = SPLIT_ALIASES.get(d.name.lower())
        if split is not None:
            split_dirs[split] = d
    missing = [s for s in SPLITS if s not in split_dirs]
    if missing:
        raise TaskError(f"{root}: folder layout needs train/valid/test sub-directories; missing {missing}")
    labels = sorted({c.name for d in split_dirs.values() for c in d.iterdir() if c.is_dir()})
    examples = []
    for split, d in split_dirs.items():
        for label_dir in sorted(c for c in d.iterdir() if c.is_dir()):
            files = _audio_files(label_dir)
            if not files and split == "train":
                raise TaskError(f"{label_dir}: empty class directory (no audio files)")
            examples += [Example(p, split, labels.index(label_dir.name)) for p in files]
    return validate(Task(name or root.name, "multiclass", examples, labels, root=root))


# ----------------------------------------------------------------------------------------------- CSV manifest
def find_manifest(root: Path) -> Path | None:
    if (root / "manifest.csv").is_file():
        return root / "manifest.csv"
    csvs = sorted(root.glob("*.csv"))
    return csvs[0] if len(csvs) == 1 else None


def read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a manifest with a clear error for a missing header, ragged rows or empty cells in path/split."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise TaskError(f"{path}: malformed CSV ({e})") from e
    for col in ("path", "split"):
        if col not in header:
            raise TaskError(f"{path}: header {header} lacks the required column {col!r}")
    out = []
    for i, row in enumerate(rows, start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise TaskError(f"{path}: row {i} has {len(row)} fields, the header has {len(header)}")
        d = dict(zip(header, (c.strip() for c in row)))
        if not d["path"] or not d["split"]:
            raise TaskError(f"{path}: row {i} has an empty path or split")
        out.append(d)
    return header, out


def infer_kind(header: list[str], rows: list[dict[str, str]]) -> str:
    """``beats`` > ``labels`` > ``label`` > ``regression``.

    A ``label`` column gives ``key`` if every label is a mir_eval key name, ``pitch`` if every label is an
    integer MIDI number (0-127), else ``multiclass`` (force ``multiclass`` for integer class ids).
    """
    if "beats" in header:
        return "beats"
    if "labels" in header:
        return "multilabel"
    if "label" in header:
        labels = {r["label"] for r in rows}
        if labels and labels <= set(KEYS):
            return "key"
        if labels and all(v.isdigit() and int(v) < 128 for v in labels):
            log.info("labels are MIDI numbers: a 128-class pitch task (force 'multiclass' for plain class ids)")
            return "pitch"
        return "multiclass"
    return "regression"


def load_csv_task(root: Path, manifest: Path, kind: str | None = None, name: str | None = None) -> Task:
    """A task from a ``path,split,...`` manifest; ``kind`` defaults to :func:`infer_kind`."""
    header, rows = read_manifest(manifest)
    kind = kind or infer_kind(header, rows)
    parse = {"multiclass": _class_targets, "key": _class_targets, "pitch": _class_targets,
             "multilabel": _multilabel_targets, "regression": _regression_targets, "beats": _beat_targets}  # fmt: skip
    if kind not in parse:
        raise TaskError(f"{manifest}: task kind {kind!r} cannot be read from a CSV manifest")
    targets, classes = parse[kind](manifest, header, rows, kind)
    examples = []
    for i, (row, target) in enumerate(zip(rows, targets), start=2):
        split = normalise_split(row["split"], f"{manifest}: row {i}")
        examples.append(Example((root / row["path"]).resolve(), split, target))
    return validate(Task(name or root.name, kind, examples, classes, root=root))


def _class_targets(manifest, header, rows, kind):
    if "label" not in header:
        raise TaskError(f"{manifest}: a {kind} task needs a 'label' column; header is {header}")
    if kind == "key":
        classes = list(KEYS)
    elif kind == "pitch":
        classes = [str(m) for m in range(128)]
    else:
        classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    targets = []
    for i, r in enumerate(rows, start=2):
        label = r["label"]
        if kind == "pitch" and label.lstrip("-").isdigit():
            label = str(int(label))
        if label not in index:
            raise TaskError(f"{manifest}: row {i}: label {r['label']!r} is not a valid {kind} class")
        targets.append(index[label])
    return targets, classes


def _multilabel_targets(manifest, header, rows, kind):
    tags = [[t.strip() for t in r["labels"].split(";") if t.strip()] for r in rows]
    classes = sorted({t for ts in tags for t in ts})
    index = {c: i for i, c in enumerate(classes)}
    targets = []
    for ts in tags:
        y = np.zeros(len(classes), np.float32)
        y[[index[t] for t in ts]] = 1.0
        targets.append(y)
    return targets, classes


def _regression_targets(manifest, header, rows, kind):
    columns = [c for c in header if c not in ("path", "split", "beats", "label", "labels")]
    if not columns:
        raise TaskError(f"{manifest}: a regression task needs at least one numeric column; header is {header}")
    targets = []
    for i, r in enumerate(rows, start=2):
        try:
            targets.append(np.array([float(r[c]) for c in columns], np.float32))
        except ValueError as e:
            raise TaskError(f"{manifest}: row {i}: non-numeric regression value ({e})") from e
    return targets, columns


def _beat_targets(manifest, header, rows, kind):
    targets = []
    for i, r in enumerate(rows, start=2):
        try:
            beats = np.array(sorted(float(b) for b in r["beats"].split(";") if b.strip()), np.float64)
        except ValueError as e:
            raise TaskError(f"{manifest}: row {i}: malformed beat times ({e})") from e
        if len(beats) == 0 or beats[0] < 0:
            raise TaskError(f"{manifest}: row {i}: no beats or a negative beat time")
        targets.append(beats)
    return targets, []


# ----------------------------------------------------------------------------------------------- entry point
def load_task(root: str | Path, kind: str | None = None, name: str | None = None) -> Task:
    """Read and validate a generic task directory (CSV manifest if there is one, else folder per class).

    Args:
        root: the task directory.
        kind: force a task kind (see :data:`KINDS`); ``None`` infers it.
        name: task name (default: the directory name).

    Raises:
        TaskError: for every layout or label problem, before any audio is decoded.
    """
    root = Path(root)
    if not root.is_dir():
        raise TaskError(f"{root}: task directory not found")
    if kind is not None and kind not in KINDS:
        raise TaskError(f"unknown task kind {kind!r} (expected one of {list(KINDS)})")
    manifest = find_manifest(root)
    if manifest is not None:
        return load_csv_task(root, manifest, kind, name)
    if kind not in (None, "multiclass"):
        raise TaskError(f"{root}: no manifest CSV, and the folder layout only gives multiclass tasks (not {kind})")
    return load_folder_task(root, name)
