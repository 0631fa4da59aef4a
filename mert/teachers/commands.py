"""CLI: ``mert label CORPUS_DIR LABELS_DIR`` (teacher and settings from ``params.yaml`` section ``label``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mert.cli import add_params_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label an ingested corpus with the teacher chosen in params (rvq or kmeans)")
    p.add_argument("corpus", type=Path, help="ingested corpus directory (mert ingest)")
    p.add_argument("labels", type=Path, help="labels directory (one sub-directory per teacher identity)")
    p.add_argument("--teacher", choices=["rvq", "kmeans"], help="override label.teacher")
    p.add_argument("--weights", help="override label.rvq.weights: pretrained | random | PATH")
    p.add_argument("--device", help="override label.device: cpu | cuda | cuda:N | auto")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--shard-index", type=int, help="this process's block of the range (default: $RANK or 0)")
    p.add_argument("--num-shards", type=int, help="number of blocks (default: $WORLD_SIZE or 1)")
    p.add_argument("--start", type=int, help="first manifest row of the range")
    p.add_argument("--stop", type=int, help="manifest row after the range")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--metrics", type=Path, help="also write the summary JSON here (for `dvc metrics`)")
    add_params_arg(p)
    p.set_defaults(handler=_label)


def _label(args: argparse.Namespace) -> int:
    from mert.params import load_section
    from mert.teachers.label_run import run_label

    over = {k: getattr(args, k) for k in ("teacher", "device", "batch_size") if getattr(args, k) is not None}
    params = load_section("label", args.params, over)
    if args.weights is not None:
        params.rvq.weights = args.weights
    # torchrun sets RANK / WORLD_SIZE: each rank then labels its own block of the manifest.
    shard = args.shard_index if args.shard_index is not None else int(os.environ.get("RANK", 0))
    shards = args.num_shards if args.num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    summary = run_label(
        args.corpus,
        args.labels,
        params,
        shard_index=shard,
        num_shards=shards,
        start=args.start,
        stop=args.stop,
        progress=not args.no_progress,
    )
    if args.metrics:
        from mert.utils.io import atomic_write_json

        atomic_write_json(args.metrics, summary.as_dict())
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print_summary(summary)
    return 0


def print_summary(s) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"label: {s.teacher}", show_header=True)
    t.add_column("")
    t.add_column("clips", justify="right")
    t.add_column("audio", justify="right")
    t.add_row("manifest rows", f"{s.rows[0]}..{s.rows[1] - 1}" if s.clips else "none", "")
    t.add_row("labelled (new)", str(s.computed), f"{s.computed_seconds / 60:.1f} min")
    t.add_row("cached", str(s.cached), "")
    t.add_row("rejected", str(s.rejected), "")
    console = Console()
    console.print(t)
    console.print(f"labels: {s.store}")
    if s.reasons:
        console.print("rejected by reason: " + ", ".join(f"{k} x{v}" for k, v in sorted(s.reasons.items())))
        console.print(f"details: {s.rejects_csv}")
    console.print(
        f"wall {s.wall_seconds:.1f} s (encode {s.encode_seconds:.1f} s, {s.batches} batches of "
        f"{s.windows} windows), {s.x_realtime:.1f}x real time"
    )
