"""CLI: ``mert label CORPUS_DIR LABELS_DIR`` and ``mert teacher fit CORPUS_DIR OUT_DIR``.

The teacher and its settings come from ``params.yaml`` section ``label``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mert.cli import add_params_arg

TEACHERS = ("rvq", "kmeans", "bestrq", "melrvq", "hidden")  # mert.teachers.config.TEACHER_NAMES (cheap to import)
FITTABLE = ("melrvq", "bestrq", "kmeans", "hidden", "cqt")


def register(sub: argparse._SubParsersAction) -> None:
    _register_label(sub)
    _register_teacher(sub)


def _register_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label an ingested corpus with the teacher chosen in params")
    p.add_argument("corpus", type=Path, help="ingested corpus directory (mert ingest)")
    p.add_argument("labels", type=Path, help="labels directory (one sub-directory per teacher identity)")
    p.add_argument(
        "--teacher",
        choices=TEACHERS,
        help="override label.teacher: rvq (EnCodec, MERT-v1) | kmeans (MFCC k-means, MERT-v0) | "
        "bestrq (mel BEST-RQ, MusicFM) | melrvq (Mel-RVQ, MuQ) | hidden (k-means of a trained model's hidden "
        "state: HuBERT iteration 2)",
    )
    p.add_argument("--weights", help="override label.rvq.weights: pretrained | random | PATH")
    _add_hidden_args(p)
    p.add_argument("--device", help="override label.device: cpu | cuda | cuda:N | auto")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument(
        "--shard-index",
        type=int,
        help="this process's block of the range, in whole audio shards: one process writes each shard's label "
        "pack (default: $RANK or 0)",
    )
    p.add_argument("--num-shards", type=int, help="number of blocks (default: $WORLD_SIZE or 1)")
    p.add_argument(
        "--start", type=int, help="first manifest row of the range (rounded to whole audio shards: a shard "
        "belongs to the range that holds its first row)"
    )  # fmt: skip
    p.add_argument("--stop", type=int, help="manifest row after the range (rounded likewise)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--metrics", type=Path, help="also write the summary JSON here (for `dvc metrics`)")
    p.add_argument(
        "--allow-single-code",
        action="store_true",
        help="accept a store in which a codebook uses a single code (refused by default, here and by "
        "mert pretrain: such a codebook teaches nothing); recorded in the store's usage.json",
    )
    add_params_arg(p)
    p.set_defaults(handler=_label)


def _add_hidden_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--parent",
        help="override label.hidden.model: the trained encoder whose hidden states the hidden teacher clusters "
        "(an export dir, a checkpoint step dir, a hub id, models:/name@alias or models:/name/N)",
    )
    p.add_argument(
        "--layer", type=int, help="override label.hidden.layer: the hidden state clustered (0..N, -1 = the last)"
    )


def _apply_hidden_args(params, args: argparse.Namespace) -> None:
    if args.parent is not None:
        params.hidden.model = args.parent
    if args.layer is not None:
        params.hidden.layer = args.layer


def _label(args: argparse.Namespace) -> int:
    from mert.params import load_section
    from mert.teachers.label_run import run_label
    from mert.teachers.labels import UntrainableLabels

    over = {k: getattr(args, k) for k in ("teacher", "device", "batch_size") if getattr(args, k) is not None}
    params = load_section("label", args.params, over)
    if args.weights is not None:
        params.rvq.weights = args.weights
    _apply_hidden_args(params, args)
    # torchrun sets RANK / WORLD_SIZE: each rank then labels its own block of the manifest.
    shard = args.shard_index if args.shard_index is not None else int(os.environ.get("RANK", 0))
    shards = args.num_shards if args.num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    try:
        summary = run_label(
            args.corpus,
            args.labels,
            params,
            shard_index=shard,
            num_shards=shards,
            start=args.start,
            stop=args.stop,
            progress=not args.no_progress,
            allow_single_code=args.allow_single_code,
        )
    except UntrainableLabels as e:
        if getattr(e, "summary", None) is not None and not args.json:
            print_summary(e.summary)  # the usage table, then the refusal (exit 1)
        raise
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
    print_usage(s.usage, console)


def print_usage(usage: dict, console=None) -> None:
    """The per-codebook code-usage table of a ``LabelStore.usage`` dict, and a WARNING per single-code codebook."""
    import math

    from rich.console import Console
    from rich.table import Table

    from mert.teachers.label_run import single_code_codebooks, single_code_warning

    console = console or Console()
    if not usage.get("codebooks"):
        return
    title = f"code usage: {usage['clips']} clips, {usage['frames']} frames"
    t = Table(title=title, show_header=True)
    for name in ("codebook", "codes used", "entropy bits", "/ max", "top code", "top share"):
        t.add_column(name, justify="right")
    for k, u in usage["codebooks"].items():
        t.add_row(
            k,
            f"{u['distinct']} / {u['codebook_size']}",
            f"{u['entropy_bits']:.2f}",
            f"{u['entropy_bits'] / math.log2(u['codebook_size']):.2f}",  # of log2(C) bits
            str(u["top_code"]),
            f"{u['top_share']:.3f}",
        )
    console.print(t)
    accepted = " (accepted with --allow-single-code)" if usage.get("single_code_allowed") else ""
    for k in single_code_codebooks(usage):
        console.print(f"[bold red]WARNING{accepted}[/]: {single_code_warning(usage, k)}", highlight=False)


def _register_teacher(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="teacher tools: fit a teacher on an ingested corpus")
    tsub = p.add_subparsers(dest="teacher_command", required=True, metavar="COMMAND")
    f = tsub.add_parser(
        "fit",
        help="fit a teacher on a corpus: melrvq (Mel-RVQ), bestrq (mel statistics), kmeans (centroids), hidden "
        "(k-means of a trained model's hidden state) or cqt (log-CQT statistics)",
        description="Fit what a teacher learns from a corpus, with params.yaml `label.<teacher>`, into OUT_DIR; "
        "then set label.melrvq.model / label.bestrq.stats / label.kmeans.model / label.hidden.kmeans_model to "
        "OUT_DIR. A killed Mel-RVQ fit resumes from OUT_DIR's checkpoint. (`mert label` fits on demand when those "
        "are null.) `--teacher cqt` measures the statistics of the log-scaled CQT target (objective_overrides "
        "cqt_scale: log).",
    )
    f.add_argument("corpus", type=Path, help="ingested corpus directory (mert ingest)")
    f.add_argument("out", type=Path, help="output directory of the fitted model")
    f.add_argument("--teacher", choices=FITTABLE, default="melrvq", help="which teacher to fit (default melrvq)")
    _add_hidden_args(f)
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--json", action="store_true", help="print the fit report as JSON")
    add_params_arg(f)
    f.set_defaults(handler=_fit)


def _fit(args: argparse.Namespace) -> int:
    from mert.params import load_section

    params = load_section("label", args.params)
    _apply_hidden_args(params, args)
    fit = {"melrvq": _fit_melrvq, "bestrq": _fit_bestrq, "kmeans": _fit_kmeans, "hidden": _fit_hidden,
           "cqt": _fit_cqt}[args.teacher]  # fmt: skip
    report = fit(args, params)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _fit_melrvq(args: argparse.Namespace, params) -> dict:
    from rich.console import Console

    from mert.teachers.base import TeacherError
    from mert.teachers.build import fit_melrvq_model
    from mert.teachers.melrvq import MODEL_FILE, MelRVQModel

    want = params.melrvq.settings()
    if (args.out / MODEL_FILE).exists():
        model = MelRVQModel.load(args.out)
        if model.settings != want:
            raise TeacherError(f"{args.out} holds a Mel-RVQ fitted with other settings; use another directory")
    else:
        model = fit_melrvq_model(params, args.corpus, args.out, args.out, progress=not args.no_progress)
    info = model.fit_info
    report = {"teacher": "melrvq", "model": str(args.out), "hash": model.hash, **info}
    report.pop("history", None)
    if not args.json:
        console = Console()
        console.print(
            f"Mel-RVQ {want.n_codebooks} x {want.codebook_size}: {info['steps']} steps on {info['tokens']} tokens; "
            f"reconstruction L1 {info['recon_l1_initial']:.4f} -> {info['recon_l1_final']:.4f} "
            f"(normalised log-mel, {info['eval_tokens']} tokens); {info['replaced_codes']} dead codes replaced"
        )
        usage = {"teacher": "melrvq", "clips": info["clips"], "frames": info["eval_tokens"]}
        usage.update(codebook_size=want.codebook_size, codebooks={str(u["codebook"]): u for u in info["usage"]})
        print_usage(usage, console)
        console.print(f"model: {args.out} (hash {model.hash[:12]}); use it with label.melrvq.model: {args.out}")
    return report


def _fit_bestrq(args: argparse.Namespace, params) -> dict:
    from mert.data.shards import Corpus
    from mert.teachers.mel import MelSpec, compute_mel_stats

    b = params.bestrq
    stats = compute_mel_stats(
        Corpus(args.corpus, verify=False), MelSpec(24_000, b.n_fft, b.n_mels, b.stack), b.fit_frames
    )
    path = stats.save(args.out)
    if not args.json:
        print(f"mel statistics: mean {stats.mean} dB, std {stats.std} dB over {stats.frames} frames -> {path}")
        print(f"use them with label.bestrq.stats: {path}")
    return {"teacher": "bestrq", "stats": str(path), "hash": stats.hash, "mean": stats.mean, "std": stats.std}


def _fit_kmeans(args: argparse.Namespace, params) -> dict:
    from mert.data.shards import Corpus
    from mert.teachers.kmeans import fit_kmeans

    k = params.kmeans
    settings = {"features": list(k.features), "n_clusters": list(k.n_clusters), "n_mels": k.n_mels}
    settings.update(n_mfcc=k.n_mfcc, sample_rate=24_000, seed=k.seed)
    model = fit_kmeans(Corpus(args.corpus, verify=False), settings, k.fit_frames)
    model.save(args.out)
    if not args.json:
        print(f"k-means {settings['features']} x {settings['n_clusters']} -> {args.out}")
        print(f"use it with label.kmeans.model: {args.out}")
    return {"teacher": "kmeans", "model": str(args.out), "hash": model.hash, **model.fit_info}


def _fit_hidden(args: argparse.Namespace, params) -> dict:
    from mert.teachers.base import TeacherError
    from mert.teachers.build import fit_hidden_model, hidden_features
    from mert.teachers.hidden import check_kmeans, settings_of
    from mert.teachers.kmeans import MODEL_FILE, KMeansModel

    features = hidden_features(params)
    if (args.out / MODEL_FILE).exists():
        model = KMeansModel.load(args.out)
        try:
            check_kmeans(model, settings_of(features), str(args.out))
        except TeacherError as e:
            raise TeacherError(f"{e}; use another directory") from e
    else:
        model = fit_hidden_model(params, features, args.corpus, progress=not args.no_progress)
        model.save(args.out)
    info = model.fit_info
    if not args.json:
        print(
            f"hidden k-means: {params.hidden.n_clusters} clusters of layer {features.layer} of {params.hidden.model} "
            f"(weights {features.parent.weights_sha256[:12]}) on {info.get('frames')} frames of "
            f"{info.get('clips_read')} clips; inertia {info.get('inertia', float('nan')):.4g} per frame -> "
            f"{args.out}"
        )
        print(f"use it with label.hidden.kmeans_model: {args.out} (and label.hidden.model: {params.hidden.model})")
    return {"teacher": "hidden", "model": str(args.out), "hash": model.hash, "layer": features.layer,
            "parent": params.hidden.model, "parent_weights_sha256": features.parent.weights_sha256, **info}  # fmt: skip


def _fit_cqt(args: argparse.Namespace, params) -> dict:
    from mert.data.shards import Corpus
    from mert.model.pretraining import PretrainingConfig
    from mert.teachers.cqt import log_cqt_stats
    from mert.utils.io import atomic_write_json

    stats = log_cqt_stats(Corpus(args.corpus, verify=False), PretrainingConfig.cqt_log_gain)
    path = args.out / "cqt-stats.json"
    atomic_write_json(path, stats)
    if not args.json:
        over = {k: v for k, v in stats.items() if k != "frames"}
        print(f"log-CQT statistics over {stats['frames']} frames -> {path}")
        print(f"use them with objective_overrides: {json.dumps({'cqt_scale': 'log', **over})}")
    return {"teacher": "cqt", "stats": str(path), **stats}
