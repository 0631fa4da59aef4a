"""Does the student get past the unigram? Short pretraining runs over learning rate x warmup x LN layout x teacher.

Each run is the real :class:`mert.train.trainer.Trainer` (same data, masking, mixture, heads, loss and validation as
``mert pretrain``) for ``--steps`` optimiser steps from a fresh init, validated every ``--val-every`` steps on the
trainer's fixed validation crops. Per run the table prints, at the last validation:

- ``margin``: mean over codebooks of val masked accuracy minus the majority rate (the share of the training labels'
  most frequent code among the very frames evaluated); ``max``: the best codebook's margin. A student that only
  learned the code frequencies scores exactly 0.000;
- ``CE`` / ``floor``: val masked CE and the unigram floor (CE of the training code frequencies on the same frames),
  nats per codebook; ``gain`` = floor - CE (> 0: the student predicts better than the code frequencies);
- ``best``: the best mean margin seen at any validation, and ``s``: wall seconds of the run.

Usage (single-threaded; the demo corpus and its labels from ``mert demo-corpus`` + ``mert ingest`` + ``mert label``)::

    python benchmarks/collapse_sweep.py CORPUS LABEL_STORE [LABEL_STORE ...] --steps 150 \\
        --lrs 5e-4 2e-3 5e-3 --warmups 10 50 --layouts post pre --models tiny

``--models`` names: ``tiny`` (mert-tiny: 32 wide, 2 layers), ``wide`` (128 wide, 4 layers, 4 heads, FFN 256),
``small`` (64 wide, 4 layers, conv 64); ``--regs`` names: ``ref`` (95M dropouts 0.1, layerdrop 0.05, mixture 0.5,
feature_grad_mult 0.1), ``none`` (no dropout/layerdrop/mixture, feature_grad_mult 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
import time
from pathlib import Path

MODELS = {
    "tiny": {},
    "wide": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256),
    "small": dict(
        conv_dim=(64,) * 7,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=4,
    ),
}
REGS = {
    "ref": ({}, {}),
    "none": (
        dict(hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, feature_grad_mult=1.0),
        dict(mixture_prob=0.0),
    ),
    "light": (dict(layerdrop=0.0, feature_grad_mult=1.0), dict(mixture_prob=0.0)),
}


def run_one(corpus, labels, base, *, model, reg, layout, lr, warmup, steps, val_every, final_dim=None):
    import torch

    from mert.train.distributed import DistInfo
    from mert.train.trainer import Trainer

    enc = {**MODELS[model], **REGS[reg][0], "do_stable_layer_norm": layout == "pre"}
    obj = dict(REGS[reg][1])
    if final_dim:
        obj["final_dim"] = final_dim
    prof = dataclasses.replace(
        base,
        model_overrides=enc,
        objective_overrides=obj,
        lr=lr,
        warmup_steps=warmup,
        max_steps=steps,
        loader_prefetch=0,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        t = Trainer(prof, corpus, labels, out, DistInfo()).setup()
        K, teacher = t.objective.n_codebooks, t.objective.teacher
        rows = []
        it = iter(t.loader)
        for step in range(1, steps + 1):
            t.train_step(next(it))
            t.step = step
            if step % val_every == 0 or step == steps:
                v = t.validate()
                margin = [v[f"val/acc_margin_{k}"] for k in range(K)]
                ce = sum(v[f"val/loss/{teacher}_ce_{k}"] for k in range(K)) / K
                floor = sum(v[f"val/unigram_ce_{k}"] for k in range(K)) / K
                rows.append((step, sum(margin) / K, max(margin), ce, floor))
        it.close()
    del t
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("labels", nargs="+", help="label stores (<labels>/<teacher-key>)")
    ap.add_argument("--profile", default="mert-tiny", help="base profile (batch, crops, schedule shape)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--val-batches", type=int, default=4)
    ap.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 2e-3, 5e-3])
    ap.add_argument("--warmups", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--layouts", nargs="+", choices=["post", "pre"], default=["post", "pre"])
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny"])
    ap.add_argument("--regs", nargs="+", choices=sorted(REGS), default=["ref"])
    ap.add_argument("--final-dim", type=int, default=None)
    ap.add_argument("--holdout", type=int, default=0, help="validate on this many held-out clips (0: training clips)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from mert.data.shards import Corpus
    from mert.train.labels import open_labels
    from mert.train.params import PROFILES

    torch.set_num_threads(args.threads)
    corpus = Corpus(args.corpus)
    base = dataclasses.replace(PROFILES[args.profile], val_batches=args.val_batches, val_holdout_clips=args.holdout)
    print(
        f"{'teacher':24s} {'model':5s} {'reg':5s} {'LN':4s} {'lr':>7s} {'warm':>4s} {'step':>4s} {'margin':>7s} "
        f"{'max':>7s} {'CE':>6s} {'floor':>6s} {'gain':>6s} {'best':>7s} {'s':>5s}",
        flush=True,
    )
    for path, model, reg, layout, lr, warmup in itertools.product(
        args.labels, args.models, args.regs, args.layouts, args.lrs, args.warmups
    ):
        labels = open_labels(path, corpus)
        rows, sec = run_one(
            corpus,
            labels,
            base,
            model=model,
            reg=reg,
            layout=layout,
            lr=lr,
            warmup=warmup,
            steps=args.steps,
            val_every=args.val_every,
            final_dim=args.final_dim,
        )
        step, margin, best_k, ce, floor = rows[-1]
        best = max(r[1] for r in rows)
        name = Path(path).name[:24]
        print(
            f"{name:24s} {model:5s} {reg:5s} {layout:4s} {lr:7.1e} {warmup:4d} {step:4d} {margin:+7.3f} {best_k:+7.3f} "
            f"{ce:6.3f} {floor:6.3f} {floor - ce:+6.3f} {best:+7.3f} {sec:5.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
