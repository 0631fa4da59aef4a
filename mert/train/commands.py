"""CLI: ``mert pretrain CORPUS_DIR LABELS_DIR OUT_DIR`` (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mert.cli import add_params_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a MERT encoder (resumes OUT_DIR's run if it is the same run; refuses another one)",
        description="Pretrain a MERT encoder. OUT_DIR holds one run, bound to its corpus, labels, recipe and code "
        "(run.json): the same command resumes it (or does nothing when finished), a larger --max-steps extends it "
        "(the LR decay is re-planned to the new end), and a different corpus/labels/recipe/code is refused with "
        "what differs, unless --on-change fresh.",
    )
    p.add_argument("corpus", type=Path, help="ingested corpus directory (mert ingest)")
    p.add_argument("labels", help="label store (mert label); 'teacher:random' labels in memory, 'hash:8:1024' fakes")
    p.add_argument("out", type=Path, help="run directory: checkpoints/, export/, metrics.jsonl, result.json")
    p.add_argument("--profile", help="pretrain.profiles entry (default: params.yaml pretrain.profile)")
    p.add_argument("--max-steps", type=int, dest="max_steps", help="override; on an existing run: extend it")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--tracker", choices=["mlflow", "disk", "stdout"])
    p.add_argument("--tracking-uri", dest="tracking_uri")
    p.add_argument("--run-id", dest="run_id", help="log into this existing MLflow run")
    p.add_argument(
        "--init-from",
        dest="init_from",
        metavar="DIR_OR_HUB_ID",
        help="continued pretraining: start the encoder from this released-layout checkpoint (fresh heads, "
        "optimiser and schedule); overrides the profile's init_from",
    )
    p.add_argument(
        "--on-change",
        dest="on_change",
        choices=["refuse", "fresh"],
        default="refuse",
        help="OUT_DIR holds a run of another corpus/labels/recipe/code: refuse (default, says what differs) or "
        "fresh (move it to OUT_DIR.superseded/ and train a new run; what dvc.yaml and the Prefect flow use)",
    )
    p.add_argument(
        "--allow-code-change",
        dest="allow_code_change",
        action="store_true",
        help="continue a run whose only difference is the training code (recorded in its lineage)",
    )
    p.add_argument("--bench-loader", action="store_true", help="only measure the data loader's batches/s")
    add_params_arg(p)
    p.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from mert.params import load_section

    keys = ("profile", "tracker", "tracking_uri")
    params = load_section("pretrain", args.params, {k: getattr(args, k) for k in keys})
    if args.bench_loader:
        return _bench_loader(args, params)
    from mert.train.api import pretrain

    res = pretrain(
        args.corpus,
        args.labels,
        args.out,
        params,
        max_steps=args.max_steps,
        device=args.device,
        run_id=args.run_id,
        init_from=args.init_from,
        on_change=args.on_change,
        allow_code_change=args.allow_code_change,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps(res, indent=2, default=str))
    return 0


def _bench_loader(args: argparse.Namespace, params) -> int:
    from mert.data.shards import Corpus
    from mert.train.data import CropSampler, PretrainLoader, loader_throughput
    from mert.train.labels import open_labels

    p = params.resolve()
    corpus = Corpus(args.corpus)
    sampler = CropSampler(
        corpus,
        open_labels(args.labels, corpus),
        p.crop_samples,
        p.min_clip_samples,
        p.micro_batch_clips,
        1,
        p.grad_accum(1),
        p.seed,
    )
    print(json.dumps(loader_throughput(PretrainLoader(sampler, prefetch=0)), indent=2))
    return 0
