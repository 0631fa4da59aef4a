"""Run ``mert pretrain`` in a subprocess with a params file holding one test profile."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mert.train.params import Profile

REPO = Path(__file__).resolve().parents[2]


def write_params(path: Path, profile: Profile, **section) -> Path:
    prof = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(profile).items()}
    data = {"pretrain": {"profile": "test", "profiles": {"test": prof}, "tracker": "disk", **section}}
    path.write_text(yaml.safe_dump(data))
    return path


def pretrain_cmd(corpus: Path, out: Path, params: Path, nproc: int = 1) -> list[str]:
    args = ["pretrain", str(corpus), "hash:8:1024", str(out), "--params", str(params), "--device", "cpu"]
    if nproc == 1:
        return [sys.executable, "-m", "mert.cli", *args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return [*torchrun, "-m", "mert.cli", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res
