"""Probing throughput on the demo tasks: feature extraction (clips/s) and a full layer sweep (wall time).

For each model and demo task: extraction with no cache at batch size 1 and ``--batch`` (clips/s and audio x
real time), a cache read of the same features, then the full sweep (every layer + the weighted sum x the LR
grid, early stopping) on the extracted features.

    python benchmarks/probe.py [--demo /tmp/demo] [--models mfcc random:mert-tiny] [--lrs 1e-3 5e-3]

The demo corpus is generated in a temporary directory when ``--demo`` is not given. Record ``uptime``
next to the numbers: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mert.probe.api import resolve_task
from mert.probe.features import extract
from mert.probe.models import load_model
from mert.probe.sweep import SweepConfig, build_splits, sweep

TASKS = ("key", "timbre", "pitch", "tempo")


def audio_seconds(task) -> float:
    import soundfile as sf

    return sum(sf.info(str(e.path)).duration for e in task.examples)


def bench_task(spec: str, task_dir: Path, args, cache: Path) -> dict:
    task = resolve_task(task_dir)
    model = load_model(spec)
    mode = "frame" if task.kind == "beats" else "clip"
    row = {"model": spec, "task": task.name, "clips": len(task.examples)}
    seconds = audio_seconds(task)
    for batch in sorted({1, args.batch}):
        t0 = time.perf_counter()
        feats = extract(model, task.examples, mode, args.window, batch_size=batch)
        dt = time.perf_counter() - t0
        row[f"extract_b{batch}_clips_s"] = len(task.examples) / dt
        row[f"extract_b{batch}_xrt"] = seconds / dt
    extract(model, task.examples, mode, args.window, batch_size=args.batch, cache_root=cache)
    t0 = time.perf_counter()
    extract(model, task.examples, mode, args.window, batch_size=args.batch, cache_root=cache)
    row["cache_read_s"] = time.perf_counter() - t0
    cfg = SweepConfig(lrs=tuple(args.lrs), max_epochs=args.max_epochs, patience=args.patience)
    t0 = time.perf_counter()
    res = sweep(task, *build_splits(task, feats), cfg)
    row["sweep_s"] = time.perf_counter() - t0
    row["n_probes"] = len(res.per_layer) * len(args.lrs)
    row["test"] = f"{res.metric}={res.test_metrics[res.metric]:.3f}@{res.best_layer}"
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, help="demo corpus directory (default: generate one)")
    p.add_argument("--models", nargs="+", default=["mfcc", "chroma", "cqt", "random:mert-tiny"])
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--window", type=float, default=5.0)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3])
    p.add_argument("--max-epochs", type=int, default=50, dest="max_epochs")
    p.add_argument("--patience", type=int, default=10)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = args.demo
        if demo is None:
            from mert.data.synth import DemoParams, generate

            demo = generate(Path(tmp) / "demo", DemoParams())
        print(f"load average {os.getloadavg()}, torch threads for extraction: default")
        header = None
        for spec in args.models:
            for name in args.tasks:
                row = bench_task(spec, demo / "tasks" / name, args, Path(tmp) / "cache")
                if header is None:
                    header = list(row)
                    print(" | ".join(header))
                print(" | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()), flush=True)


if __name__ == "__main__":
    main()
