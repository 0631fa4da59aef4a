"""Auto-tagging: MagnaTagATune top-50 and the four MTG-Jamendo subsets (macro ROC-AUC and AP).

MTT (``root``): ``annotations_final.csv`` (tab-separated: ``clip_id``, 188 tag columns of 0/1, ``mp3_path``)
and ``mp3/<d>/<name>.mp3``. The 50 most frequent tags are used, and the classic split by the first
character of ``mp3_path``'s directory (``0``-``b`` train, ``c`` valid, ``d``-``f`` test; Dieleman &
Schrauwen 2014). ``root/split/{train,valid,test}.txt`` (one ``mp3_path`` per line) overrides it.

MTG-Jamendo (``root``): the ``mtg-jamendo-dataset`` repository checkout with
``data/splits/split-0/autotagging_<subset>-{train,validation,test}.tsv`` (``TRACK_ID ARTIST_ID ALBUM_ID PATH
DURATION TAGS...``, tags tab-separated) and the audio under ``root/audio/<PATH>`` (``raw_30s`` download;
the ``.low.mp3`` variant is found too). MARBLE uses 30 s windows for MTG.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from mert.probe.adapters.common import read_split_lists, require
from mert.probe.tasks import Example, Task, TaskError, normalise_split, validate

MTT_TRAIN, MTT_VALID = set("0123456789ab"), {"c"}


def _multi_hot(tags: list[str], classes: list[str]) -> np.ndarray:
    y = np.zeros(len(classes), np.float32)
    y[[classes.index(t) for t in tags if t in classes]] = 1.0
    return y


def _mtt_split(rel: str) -> str:
    return "train" if rel[0] in MTT_TRAIN else ("valid" if rel[0] in MTT_VALID else "test")


def mtt(root: Path, n_tags: int = 50) -> Task:
    """MagnaTagATune top-50 tagging."""
    table = require(root / "annotations_final.csv", "MTT annotations")
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header = rows[0]
    if "mp3_path" not in header or "clip_id" not in header:
        raise TaskError(f"{table}: expected tab-separated columns clip_id, <tags>, mp3_path; got {header[:3]}...")
    tag_cols = [c for c in header if c not in ("clip_id", "mp3_path")]
    body = [dict(zip(header, r)) for r in rows[1:] if len(r) == len(header)]
    counts = Counter({t: sum(r[t] == "1" for r in body) for t in tag_cols})
    classes = sorted(t for t, _ in counts.most_common(n_tags))
    lists = read_split_lists(root / "split", "{split}.txt")
    examples = []
    for r in body:
        rel = r["mp3_path"]
        split = (
            lists.get(rel)
            if lists
            else ("train" if rel[0] in MTT_TRAIN else "valid" if rel[0] in MTT_VALID else "test")
        )
        if split and rel:
            examples.append(
                Example(root / "mp3" / rel, split, _multi_hot([t for t in classes if r[t] == "1"], classes))
            )
    return validate(Task("mtt", "multilabel", examples, classes, root=root))


def _mtg_audio(audio: Path, rel: str) -> Path:
    path = audio / rel
    low = path.with_name(path.name.replace(".mp3", ".low.mp3"))
    return low if not path.exists() and low.exists() else path


def mtg(root: Path, subset: str) -> Task:
    """One MTG-Jamendo auto-tagging subset (``instrument``, ``moodtheme``, ``genre``, ``top50tags``)."""
    splits_dir = require(root / "data" / "splits" / "split-0", "MTG-Jamendo split-0 TSVs")
    audio = require(root / "audio", "MTG-Jamendo audio directory")
    rows: list[tuple[str, str, list[str]]] = []
    for name in ("train", "validation", "test"):
        tsv = require(splits_dir / f"autotagging_{subset}-{name}.tsv", f"{subset} {name} split")
        with open(tsv, newline="", encoding="utf-8") as f:
            lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        if not lines or lines[0][:4] != ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH"]:
            raise TaskError(f"{tsv}: expected a TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS header")
        for i, parts in enumerate(lines[1:], start=2):
            if len(parts) < 6:
                raise TaskError(f"{tsv}: row {i} has {len(parts)} fields, expected at least 6")
            rows.append((normalise_split(name, str(tsv)), parts[3], parts[5:]))
    classes = sorted({t for split, _, tags in rows if split == "train" for t in tags})
    examples = [Example(_mtg_audio(audio, rel), split, _multi_hot(tags, classes)) for split, rel, tags in rows]
    name = {"top50tags": "top50"}.get(subset, subset)
    return validate(Task(f"mtg-{name}", "multilabel", examples, classes, window=30.0, root=root))


def mtg_instrument(root: Path) -> Task:
    return mtg(root, "instrument")


def mtg_moodtheme(root: Path) -> Task:
    return mtg(root, "moodtheme")


def mtg_genre(root: Path) -> Task:
    return mtg(root, "genre")


def mtg_top50(root: Path) -> Task:
    return mtg(root, "top50tags")
