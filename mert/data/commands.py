"""CLI: ``mert demo-corpus`` and ``mert ingest``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mert.cli import add_params_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-corpus",
        help="write the built-in demo corpus (real scores rendered with a GM SoundFont; "
        "demo.source: synthetic for generated tones)",
    )
    p.add_argument("out", type=Path, help="output directory")
    p.add_argument("--seed", type=int)
    p.add_argument("--n-clips", type=int, dest="n_clips")
    add_params_arg(p)
    p.set_defaults(handler=_demo)

    p = sub.add_parser("ingest", help="decode, check and shard a directory of audio into a 24 kHz corpus")
    p.add_argument("src", type=Path, help="directory tree of audio files (wav, flac, ogg, mp3, ...)")
    p.add_argument("out", type=Path, help="corpus directory (created or updated incrementally)")
    p.add_argument("--workers", type=int, help="decoding processes (0 = one per core)")
    p.add_argument("--sample-rate", type=int, dest="sample_rate")
    p.add_argument("--min-seconds", type=float, dest="min_seconds")
    p.add_argument("--max-seconds", type=float, dest="max_seconds")
    p.add_argument(
        "--shard-dtype",
        choices=["float32", "int16"],
        dest="shard_dtype",
        help="how shards store samples: float32 (exact) or int16 PCM (half the bytes; a new corpus only)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--metrics", type=Path, help="also write the summary JSON here (for `dvc metrics`)")
    add_params_arg(p)
    p.set_defaults(handler=_ingest)


def _overrides(args: argparse.Namespace, keys: list[str]) -> dict:
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _demo(args: argparse.Namespace) -> int:
    from mert.params import load_section
    from mert.stages import demo_corpus

    params = load_section("demo", args.params, _overrides(args, ["seed", "n_clips"]))
    out = demo_corpus(args.out, params)
    n = sum(1 for _ in (out / "raw").iterdir())
    print(f"demo corpus written to {out}: {n} files in raw/, probing tasks in tasks/")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from mert.params import load_section
    from mert.stages import ingest_corpus

    keys = ["workers", "sample_rate", "min_seconds", "max_seconds", "shard_dtype"]
    params = load_section("ingest", args.params, _overrides(args, keys))
    summary = ingest_corpus(args.src, args.out, params, progress=not args.no_progress)
    if args.metrics:
        from mert.utils.io import atomic_write_json

        atomic_write_json(args.metrics, summary.as_dict())
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    elif summary.found == 0:
        print(no_audio_message(args.src, summary.corpus_files))
    else:
        print_summary(summary, args.out)
    return 0


def no_audio_message(src: Path, corpus_files: int) -> str:
    """What an ingest of a directory without audio files says (the run still succeeds: exit 0)."""
    from mert.audio import AUDIO_LIKE

    exts = " ".join(sorted(AUDIO_LIKE))
    return f"no audio files found under {src} (looked for {exts}); the corpus holds {corpus_files} files"


def print_summary(s, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ingest -> {out}", show_header=True)
    t.add_column("")
    t.add_column("files", justify="right")
    t.add_column("audio", justify="right")
    t.add_row("found", str(s.found), "")
    t.add_row("ingested (new)", str(s.ingested), f"{s.ingested_seconds / 60:.1f} min")
    t.add_row("unchanged (cached)", str(s.unchanged), "")
    t.add_row("rejected", str(s.rejected), "")
    t.add_row("corpus total", str(s.corpus_files), f"{s.corpus_seconds / 60:.1f} min")
    speed = s.ingested_seconds / max(s.wall_seconds, 1e-9)
    console = Console()
    console.print(t)
    if s.reasons:
        console.print("rejected by reason: " + ", ".join(f"{k} x{v}" for k, v in sorted(s.reasons.items())))
        console.print(f"details: {out / 'rejects.csv'}")
    console.print(f"wall {s.wall_seconds:.1f} s, {speed:.0f}x real time")
