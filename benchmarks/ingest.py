"""Ingestion throughput: `mert ingest` vs a plain per-file loop on the same files.

The plain reference loop is what one writes first: soundfile read -> mean over channels ->
torchaudio.functional.resample -> np.save, one file at a time. Ours adds hashing, validation,
sharding and atomic writes, and decodes in a process pool.

    python benchmarks/ingest.py [--clips 60] [--repeat 1]

Prints audio-hours ingested per wall-minute, x real time, and the ratio to the plain loop.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from mert.data.ingest import IngestParams, ingest, scan
from mert.data.synth import DemoParams, generate


def plain_loop(files: list[Path], out: Path) -> float:
    """The reference: one file at a time, no checks. Returns seconds of audio written."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for i, f in enumerate(files):
        try:
            x, sr = sf.read(str(f), dtype="float32", always_2d=True)
        except Exception:  # noqa: BLE001 - the plain loop just skips what it cannot read
            continue
        y = AF.resample(torch.from_numpy(x.mean(1)), sr, 24000).numpy()
        np.save(out / f"{i}.npy", y)
        total += y.shape[0]
    return total / 24000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mert-bench-ingest-"))
    try:
        src = (
            generate(
                tmp / "demo",
                DemoParams(seed=7, source="synthetic", n_clips=args.clips, task_clips=12, task_seconds=1.0),
            )
            / "raw"
        )
        files = scan(src)
        torch.set_num_threads(1)
        rows = []
        t_plain = []
        for r in range(args.repeat):
            t0 = time.perf_counter()
            audio_s = plain_loop(files, tmp / f"plain{r}")
            t_plain.append(time.perf_counter() - t0)
        rows.append(("plain loop (1 process)", audio_s, min(t_plain)))
        for workers in (1, os.cpu_count() or 1):
            ts = []
            for r in range(args.repeat):
                out = tmp / f"ours{workers}-{r}"
                t0 = time.perf_counter()
                s = ingest(src, out, IngestParams(workers=workers), progress=False)
                ts.append(time.perf_counter() - t0)
            rows.append((f"mert ingest (workers={workers})", s.ingested_seconds, min(ts)))
        print(f"\n{len(files)} files ({sum(f.stat().st_size for f in files) / 1e6:.0f} MB), cpu_count={os.cpu_count()}")
        cols = f"{'audio min':>10s} {'wall s':>8s} {'audio-h/wall-min':>17s} {'x realtime':>11s} {'vs plain':>9s}"
        print(f"{'pipeline':32s} {cols}")
        base = rows[0][1] / rows[0][2]
        for name, audio_s, wall in rows:
            speed = audio_s / wall
            print(f"{name:32s} {audio_s / 60:10.1f} {wall:8.2f} {speed / 60:17.2f} {speed:11.0f} {speed / base:8.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
