"""CLI: ``mert ablation {label,pretrain,probe,report}``: the stages of ``ablation/dvc.yaml``.

Everything comes from ``params.yaml`` (section ``ablation`` plus ``corpus``, ``label``, ``pretrain``, ``probe``);
the arguments only say which teacher, cell, row or task.
"""

from __future__ import annotations

import argparse
import json

from mert.cli import add_params_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablation", help="the teacher ablation's stages (ablation/dvc.yaml: dvc repro ablation/dvc.yaml)"
    )
    steps = p.add_subparsers(dest="ablation_command", required=True, metavar="STAGE")

    s = steps.add_parser("label", help="label the corpus with one teacher into <ablation.dir>/labels/<teacher>")
    s.add_argument("teacher", help="one of ablation.teachers")
    add_params_arg(s)
    s.set_defaults(handler=_label)

    s = steps.add_parser("pretrain", help="pretrain one cell <teacher>-<cqt> into <ablation.dir>/pretrain/<cell>")
    s.add_argument("cell", help="<teacher>-<cqt>, e.g. rvq-with or melrvq-without")
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_params_arg(s)
    s.set_defaults(handler=_pretrain)

    s = steps.add_parser("probe", help="probe a cell or a baseline on one task into <ablation.dir>/probe/<row>/<task>")
    s.add_argument("model", help="a cell (rvq-with) or a baseline of ablation.baselines (random = random:<preset>)")
    s.add_argument("task", help="one of ablation.tasks")
    add_params_arg(s)
    s.set_defaults(handler=_probe)

    s = steps.add_parser("report", help="tables, JSON, plot and one MLflow run per row (<ablation.report>.*)")
    s.add_argument("--command", dest="run_command", default=None, help="the command recorded as how the results "
                   "were made (default: dvc repro ablation/dvc.yaml)")  # fmt: skip
    s.add_argument("--no-mlflow", action="store_true", help="write the files only")
    add_params_arg(s)
    s.set_defaults(handler=_report)


def _label(args: argparse.Namespace) -> int:
    from mert.ablation.run import label

    s = label(args.params, args.teacher)
    print(f"labels {args.teacher}: {s['computed']} clips computed, {s['rejected']} rejected -> {s['store']}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from mert.ablation.run import pretrain

    res = pretrain(args.params, args.cell, args.device)
    print(json.dumps({k: res.get(k) for k in ("step", "export", "run_id")}, default=str))
    return 0


def _probe(args: argparse.Namespace) -> int:
    from mert.ablation.run import probe
    from mert.probe.evidence import describe

    report = probe(args.params, args.model, args.task)
    print(f"{args.model} on {args.task}: best layer {report['best_layer']}; {describe(report)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from mert.ablation.report import COMMAND, write_report
    from mert.params import load_section

    params = load_section("ablation", args.params)
    corpus = load_section("corpus", args.params).dir
    report = write_report(params, command=args.run_command or COMMAND, corpus_dir=corpus, track=not args.no_mlflow)
    from mert.ablation.report import findings

    for line in findings(report):
        print(line)
    print("wrote " + ", ".join(report["files"].values()))
    return 0
