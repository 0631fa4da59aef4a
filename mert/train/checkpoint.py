"""Self-describing, atomically written training checkpoints: ``OUT/checkpoints/step-00001000/``.

Each step directory holds ``checkpoint.pt`` (model, optimizer, scheduler, scaler, train_state, data position, RNG
states, config; only tensors and primitives, so it loads with ``torch.load(weights_only=True)``) and a readable
``config.json`` beside it. ``checkpoint.pt`` is written through ``mert.utils.io.atomic_write``: a directory without
it (a save killed half-way) is ignored and cleaned up. The last ``keep_last`` complete checkpoints are kept.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mert.utils.io import atomic_write, atomic_write_json, remove_stale_tmp

log = logging.getLogger(__name__)

CKPT_NAME = "checkpoint.pt"
STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path to checkpoint.pt)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and (d / CKPT_NAME).is_file():
            found.append((int(m.group(1)), d / CKPT_NAME))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """Path of the newest complete ``checkpoint.pt`` under ``root``, or None."""
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(root: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` to ``root/step-{step:08d}/checkpoint.pt`` atomically, then prune to ``keep_last``.

    Args:
        root: the checkpoints directory.
        step: optimiser steps done.
        state: tensors and primitives only (``torch.load(weights_only=True)`` must read it back).
        keep_last: complete checkpoints to keep (older ones and incomplete directories are deleted).

    Returns:
        Path of the written ``checkpoint.pt``.
    """
    d = step_dir(root, step)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / "config.json", state.get("config", {}))
    path = d / CKPT_NAME
    with atomic_write(path) as f:
        torch.save(state, f)
    prune(root, keep_last)
    return path


def prune(root: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and incomplete step directories."""
    root = Path(root)
    complete = list_checkpoints(root)
    keep = {p.parent for _, p in complete[-keep_last:]}
    for d in root.iterdir():
        if STEP_DIR.match(d.name) and d not in keep:
            shutil.rmtree(d, ignore_errors=True)
        elif d.is_dir():
            remove_stale_tmp(d)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code is ever executed)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


# ---------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and every CUDA device's) RNG states as tensors/primitives."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys).copy()), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
