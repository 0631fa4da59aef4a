"""Tiny probing tasks written on the fly (sines per class, 0.5-1 s clips at 24 kHz)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import sine

SR = 24000
FREQS = {"low": 220.0, "mid": 440.0, "high": 880.0}
PER_SPLIT = {"train": 6, "valid": 3, "test": 3}


def write_wav(path: Path, audio: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr)
    return path


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields or list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def tone(freq: float, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return sine(seconds, SR, freq * (1 + 0.01 * rng.standard_normal()), amp=0.3 + 0.2 * rng.random())


@pytest.fixture
def folder_task(tmp_path: Path) -> Path:
    """``ROOT/{train,valid,test}/<label>/*.wav``, 3 classes of sines."""
    root = tmp_path / "folder"
    i = 0
    for split, n in PER_SPLIT.items():
        for label, freq in FREQS.items():
            for _ in range(n // 3 + 1):
                write_wav(root / split / label / f"{i:03d}.wav", tone(freq, seed=i))
                i += 1
    return root


@pytest.fixture
def csv_task(tmp_path: Path):
    """``csv_task(kind)``: a CSV-manifest task of the given kind (multiclass, multilabel, regression, beats)."""

    def make(kind: str = "multiclass", n: int = 12) -> Path:
        root = tmp_path / f"csv-{kind}"
        rows = []
        for i in range(n):
            split = "train" if i < n // 2 else ("valid" if i < 3 * n // 4 else "test")
            label = list(FREQS)[i % 3]
            row = {"path": f"audio/{i:03d}.wav", "split": split}
            if kind == "multiclass":
                row["label"] = label
            elif kind == "multilabel":
                row["labels"] = f"{label};tonal" if i % 2 else label
            elif kind == "regression":
                row["freq"], row["loud"] = FREQS[label], 0.5
            else:
                row["beats"] = ";".join(f"{t:.3f}" for t in np.arange(0.1, 1.0, 0.25 + 0.05 * (i % 3)))
            audio = tone(FREQS[label], 1.0 if kind == "beats" else 0.5, seed=i)
            write_wav(root / row["path"], audio)
            rows.append(row)
        write_csv(root / "manifest.csv", rows)
        return root

    return make
