"""Shared fixtures: deterministic seeds and synthetic audio written on the fly (never committed WAVs)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# The pipeline measures the machine's compute to size its parallelism (mert.utils.runtime.cpu_compute: a few seconds
# of spawned processes); tests, and the processes they start, read this fixed one instead. tests/test_runtime.py
# measures for real.
os.environ.setdefault(
    "MERT_CPU_COMPUTE", json.dumps({"cores": 2, "gflops_1": 70.0, "gflops_threads": 63.0, "gflops_procs": 140.0})
)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
        prev = torch.get_default_dtype()
        yield
        torch.set_default_dtype(prev)
    except ImportError:  # pragma: no cover
        yield


def sine(seconds: float, sr: int = 24000, freq: float = 440.0, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """A sine tone (samples,) or (samples, channels), float32."""
    t = np.arange(int(seconds * sr)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def noise(seconds: float, sr: int = 24000, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(-amp, amp, int(seconds * sr))).astype(np.float32)


@pytest.fixture
def write_audio(tmp_path: Path):
    """``write_audio(rel_path, audio, sr, subtype=None)`` writes a file under ``tmp_path`` and returns its path."""

    def _write(rel: str, audio: np.ndarray, sr: int = 24000, subtype: str | None = None) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, sr, subtype=subtype)
        return path

    return _write


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo corpus (the real generator, tiny params), shared by the session."""
    from mert.data.synth import DemoParams, generate

    out = tmp_path_factory.mktemp("demo")
    return generate(
        out,
        DemoParams(
            seed=1, source="synthetic", n_clips=8, min_seconds=5.0, max_seconds=8.0, task_clips=12, task_seconds=2.0
        ),
    )


@pytest.fixture(scope="session")
def corpus_dir(demo_dir: Path, tmp_path_factory) -> Path:
    """The small demo corpus, ingested (24 kHz shards + manifest)."""
    from mert.data.ingest import IngestParams, ingest

    out = tmp_path_factory.mktemp("corpus")
    ingest(demo_dir / "raw", out, IngestParams(workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """A migrated, empty MLflow sqlite DB (migration takes seconds: done once, copied per test)."""
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(mlflow_template: Path, tmp_path: Path) -> str:
    """A fresh sqlite tracking URI (a copy of the template) with artifacts beside it."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(mlflow_template, db)
    return f"sqlite:///{db}"
