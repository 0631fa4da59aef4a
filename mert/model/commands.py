"""CLI: ``mert extract`` (per-layer MERT features for audio files)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

LAYER_LIST = re.compile(r"^-\d+(,-?\d+)*$|^-\d*\.\d+$")
"""Option values argparse must not take for options: negative numbers and comma lists of them (``-1,0``)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="per-layer MERT features (time-averaged and/or frame level) for audio files",
        description="Audio longer than --chunk-seconds is encoded in overlapping windows (bounded memory) and the "
        "frames are stitched; since layer 0's GroupNorm and the attention see one window, not the whole clip, "
        "chunked features differ slightly from a whole-clip pass (see benchmarks/encoder.py --chunking).",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="audio files and/or folders (searched recursively)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "-m",
        "--model",
        required=True,
        help="checkpoint folder in the released layout, a Hugging Face hub id (m-a-p/MERT-v1-95M[@revision]; "
        "HF_HOME, HF_HUB_OFFLINE=1 and the local cache are honoured, no repo code is run), or a preset name "
        "(mert-tiny, mert-95m, mert-330m) for a randomly initialised model",
    )
    p.add_argument("--revision", help="hub revision (branch, tag or commit) when --model is a hub id")
    p.add_argument("--seed", type=int, default=0, help="init seed when --model is a preset")
    p.add_argument(
        "--layers",
        help="comma-separated hidden-state indices, negative from the end (default: all; 0 = encoder "
        "input; e.g. --layers -1,0)",
    )
    p.add_argument("--pooling", choices=["mean", "frames", "both"], default="mean")
    p.add_argument("--format", dest="fmt", choices=["npy", "safetensors"], default="npy")
    p.add_argument("--batch-size", type=int, default=4, help="equal-length windows per forward pass")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="window length for long audio")
    p.add_argument("--overlap-seconds", type=float, default=5.0, help="overlap between windows")
    p.add_argument("--frames-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--normalize", choices=["auto", "on", "off"], default="auto", help="per-clip input normalisation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="recompute outputs that already exist")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_extract)
    # argparse (< 3.13) reads "--layers -1,0" as a missing value followed by an unknown option "-1,0"; this
    # parser has no option that looks like a number, so such values are safe to take as values.
    p._negative_number_matcher = LAYER_LIST


def _extract(args: argparse.Namespace) -> int:
    import torch

    from mert.model import MERT, PRESETS, MERTConfig
    from mert.model.extract import ExtractOptions, extract_features

    normalize = {"auto": None, "on": True, "off": False}[args.normalize]
    if args.model in PRESETS:
        torch.manual_seed(args.seed)
        cfg = MERTConfig.from_name(args.model, **({} if normalize is None else {"do_normalize": normalize}))
        model = MERT(cfg)
        print(
            f"warning: {args.model} is randomly initialised (seed {args.seed}); "
            "pass a checkpoint folder for real features"
        )
    else:
        model = MERT.from_pretrained(args.model, revision=args.revision, do_normalize=normalize)
    model.to(args.device)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    opts = ExtractOptions(
        layers=layers,
        pooling=args.pooling,
        fmt=args.fmt,
        chunk_seconds=args.chunk_seconds,
        overlap_seconds=args.overlap_seconds,
        batch_size=args.batch_size,
        frames_dtype=args.frames_dtype,
        overwrite=args.overwrite,
    )
    s = extract_features(model, args.inputs, args.out, opts, progress=not args.no_progress)
    speed = s.audio_seconds / max(s.wall_seconds, 1e-9)
    print(
        f"extract -> {args.out}: {len(s.written)} written, {len(s.skipped_existing)} already there, "
        f"{len(s.silent)} silent (skipped), {len(s.failed)} failed; {s.audio_seconds:.1f} s of audio in "
        f"{s.wall_seconds:.1f} s ({speed:.1f}x real time)"
    )
    for path, reason in s.silent.items():
        print(f"  silent: {path}: {reason}")
    for path, reason in s.failed.items():
        print(f"  failed: {path}: {reason}")
    return 1 if s.failed and not s.written else 0
