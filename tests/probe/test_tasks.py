"""Generic task layouts and the errors raised before any extraction."""

from __future__ import annotations

import numpy as np
import pytest

from mert.probe.tasks import KEYS, TaskError, load_task
from tests.probe.conftest import tone, write_csv, write_wav


def test_folder_layout(folder_task):
    task = load_task(folder_task)
    assert task.kind == "multiclass" and task.classes == ["high", "low", "mid"]
    assert task.counts() == {"train": 9, "valid": 6, "test": 6}
    assert all(e.path.is_absolute() and e.path.exists() for e in task.examples)


@pytest.mark.parametrize("kind", ["multiclass", "multilabel", "regression", "beats"])
def test_csv_kinds_are_inferred(csv_task, kind):
    task = load_task(csv_task(kind))
    assert task.kind == kind
    e = task.split("train")[1]
    if kind == "multiclass":
        assert task.classes[e.target] == "mid"
    elif kind == "multilabel":
        assert task.classes == ["high", "low", "mid", "tonal"] and e.target.tolist() == [0, 0, 1, 1]
    elif kind == "regression":
        assert task.classes == ["freq", "loud"] and e.target.tolist() == [440.0, 0.5]
    else:
        assert np.allclose(e.target[:2], [0.1, 0.4])


def test_key_names_give_a_key_task_with_24_classes(tmp_path):
    rows = [{"path": f"{i}.wav", "split": s, "label": k} for i, (s, k) in
            enumerate([("train", "C major"), ("valid", "A minor"), ("test", "Eb major")])]  # fmt: skip
    write_csv(tmp_path / "manifest.csv", rows)
    task = load_task(tmp_path)  # a key unseen in train is fine: the vocabulary is fixed
    assert task.kind == "key" and task.classes == list(KEYS) and len(KEYS) == 24


def test_midi_labels_give_a_pitch_task_and_multiclass_rejects_unseen_labels(tmp_path):
    rows = [{"path": f"{i}.wav", "split": s, "label": m} for i, (s, m) in
            enumerate([("train", 60), ("train", 61), ("valid", 60), ("test", 64)])]  # fmt: skip
    write_csv(tmp_path / "manifest.csv", rows)
    task = load_task(tmp_path)
    assert task.kind == "pitch" and len(task.classes) == 128 and task.split("test")[0].target == 64
    with pytest.raises(TaskError, match=r"\['64'\] occur in test but never in train.*pitch"):
        load_task(tmp_path, "multiclass")


def test_empty_split_is_an_error(folder_task):
    for f in (folder_task / "valid").rglob("*.wav"):
        f.unlink()
    with pytest.raises(TaskError, match=r"\['valid'\] have no files"):
        load_task(folder_task)


def test_label_only_in_test_is_an_error(folder_task):
    write_wav(folder_task / "test" / "brass" / "x.wav", tone(300.0))
    with pytest.raises(TaskError, match=r"\['brass'\] occur in test but never in train"):
        load_task(folder_task)


def test_empty_class_directory_is_an_error(folder_task):
    (folder_task / "train" / "silence").mkdir()
    with pytest.raises(TaskError, match="train/silence: empty class directory"):
        load_task(folder_task)


def test_missing_split_directory(folder_task):
    (folder_task / "valid").rename(folder_task / "other")
    with pytest.raises(TaskError, match="missing \\['valid'\\]"):
        load_task(folder_task)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,split,label\na.wav,train,x\n", "lacks the required column 'path'"),
        ("path,split,label\na.wav,train,x\nb.wav,test\n", "row 3 has 2 fields, the header has 3"),
        ("path,split,label\na.wav,training,x\nb.wav,holdout,x\n", "row 3: unknown split 'holdout'"),
        ("path,split,bpm\na.wav,train,fast\n", "row 2: non-numeric regression value"),
        ("path,split,beats\na.wav,train,0.5;x\n", "row 2: malformed beat times"),
        ("path,split,label\n,train,x\n", "row 2 has an empty path or split"),
    ],
)
def test_malformed_csv_names_file_and_row(tmp_path, text, match):
    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(TaskError, match=match) as err:
        load_task(tmp_path)
    assert "manifest.csv" in str(err.value)


def test_missing_directory_and_bad_kind(tmp_path, folder_task):
    with pytest.raises(TaskError, match="not found"):
        load_task(tmp_path / "nope")
    with pytest.raises(TaskError, match="only gives multiclass"):
        load_task(folder_task, "regression")
