"""CLI: ``mert probe`` (per-layer probing of a frozen model on a task), ``mert probe-compare`` (paired bootstrap of
two results files of one task) and ``mert promote``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mert.cli import add_params_arg

KINDS = ("multiclass", "key", "pitch", "multilabel", "regression", "beats", "separation")  # = mert.probe.tasks.KINDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="probe a frozen model layer by layer on a task (MARBLE protocol)")
    p.add_argument("--model", required=True, help="HF dir, hub id (m-a-p/MERT-v1-95M[@revision], from the local "
                   "cache or downloaded; HF_HUB_OFFLINE=1 honoured), step-* checkpoint, models:/name@alias, "
                   "random:<preset or HF dir>[@seed], mfcc, chroma, cqt, "
                   "or conv:<any of these> (the conv front end)")  # fmt: skip
    p.add_argument(
        "--task", required=True, help="task directory, or <adapter>[:<dataset root>] (mert/probe/DATASETS.md)"
    )
    p.add_argument("--out", type=Path, default=Path("results.json"), help="results JSON (plot and metrics beside it)")
    p.add_argument("--task-type", choices=KINDS, dest="task_type", help="force the task kind of a generic directory")
    p.add_argument("--metrics", type=Path, help="DVC metrics file (default: <out stem>.metrics.json)")
    p.add_argument("--lrs", type=float, nargs="+", help="override the LR grid")
    p.add_argument("--max-epochs", type=int, dest="max_epochs")
    p.add_argument("--seed", type=int, help="probe seed (init, batch order, bootstrap; probe.seed)")
    p.add_argument("--seeds", type=int, help="probes averaged per (layer, LR), seeds SEED.. (probe.seeds; 1 = MARBLE)")
    p.add_argument("--cache-dir", dest="cache_dir", help="feature cache root ('' disables)")
    p.add_argument("--mlflow", action="store_true", help="log an MLflow run via mert.tracking (if available)")
    add_params_arg(p)
    p.set_defaults(handler=_probe)

    p = sub.add_parser("probe-compare", help="paired bootstrap of two probe results of the same task: does A beat B?")
    p.add_argument("a", type=Path, help="results.json of model A")
    p.add_argument("b", type=Path, help="results.json of model B (same task, same test clips)")
    p.add_argument("--n-boot", type=int, default=1000, dest="n_boot", help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="resampling seed (default: %(default)s)")
    p.set_defaults(handler=_compare)

    p = sub.add_parser("promote", help="move the champion alias to the candidate if it wins on the chosen probe tasks")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--tasks", nargs="+", required=True, help="probe task names to compare (results.json 'task')")
    p.add_argument("--candidate", default="candidate", help="candidate alias (default: %(default)s)")
    p.add_argument("--champion", default="champion", help="champion alias (default: %(default)s)")
    p.add_argument("--min-delta", type=float, default=0.0, dest="min_delta", help="required mean score gain")
    p.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow tracking URI")
    p.add_argument("--dry-run", action="store_true", help="decide and explain, but do not move the alias")
    p.set_defaults(handler=_promote)


def _probe(args: argparse.Namespace) -> int:
    from mert.params import load_section
    from mert.probe.api import probe

    names = ("lrs", "max_epochs", "seed", "seeds", "cache_dir")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    params = load_section("probe", args.params, overrides)
    report = probe(args.model, args.task, args.out, params, args.task_type, args.metrics)
    if args.mlflow:
        from mert.probe.tracking import log_probe

        run_id = log_probe(report, args.out)
        print(f"MLflow run {run_id}")
    from mert.probe.evidence import describe

    print(f"{report['task']} [{report['task_kind']}] {args.model}: best layer {report['best_layer']} "
          f"(valid {report['valid_score']:.4f}); {describe(report)} -> {args.out}")  # fmt: skip
    print(split_counts(report))
    return 0


def split_counts(report: dict) -> str:
    """``clips per split: train 200, valid 60, test 139 of 140 (1 lost)`` and why clips were skipped.

    A split that lost clips (undecodable, silent or too-short audio) shows ``kept of total``; the skipped files
    follow with their reason (the first five).
    """
    n, total = report["n_clips"], report.get("n_clips_task") or report["n_clips"]
    cells = [f"{s} {n[s]}" + (f" of {total[s]} ({total[s] - n[s]} lost)" if total.get(s, n[s]) != n[s] else "")
             for s in n]  # fmt: skip
    lines = ["clips per split: " + ", ".join(cells)]
    skipped = report.get("skipped") or {}
    if skipped:
        reasons: dict[str, int] = {}
        for why in skipped.values():
            key = why.split(" (")[0].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        lines.append(f"skipped {len(skipped)} file(s): " + ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items())))
        lines += [f"  {path}: {why}" for path, why in sorted(skipped.items())[:5]]
    return "\n".join(lines)


def _compare(args: argparse.Namespace) -> int:
    from mert.probe.evidence import compare, describe, load

    for path in (args.a, args.b):
        print(f"{load(path).get('model', {}).get('label', path)}: {describe(load(path))}")
    c = compare(args.a, args.b, args.n_boot, args.seed)
    names = (str(args.a), str(args.b)) if c.a == c.b else (c.a, c.b)  # the same model twice: name the files
    print(f"{c.text(*names)} (paired bootstrap over {c.n} common test clips, {c.n_boot} resamples, 95% CI)")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from mert.probe.tracking import promote

    d = promote(args.name, args.tasks, args.candidate, args.champion, args.min_delta, args.tracking_uri, args.dry_run)
    for row in d.rows:
        print(f"  {row['task']:<24} candidate {row['candidate']}  champion {row['champion']}")
    verdict = "promoted" if d.promoted and not args.dry_run else ("would promote" if d.promoted else "kept champion")
    print(f"{args.name}: {verdict} (candidate v{d.candidate}, champion v{d.champion}): {d.reason}")
    return 0
