"""Can a teacher's codes be predicted from their context? Per teacher and codebook, on the same corpus.

For each label store (``mert label`` output) the frames are split in two halves (``--split time``: the first
and second half of every clip; ``--split clips``: even / odd clips of the manifest order); a smoothed bigram
``p(x_t | x_{t-lag})`` is counted on one half and scored on the other
(:func:`mert.train.diagnostics.transition_stats`). Columns:

- ``maj``: held-out share of the training-majority code (a unigram student's masked accuracy);
- ``H_uni``: held-out unigram cross-entropy in nats (a unigram student's CE);
- ``same@1``: share of frames whose code equals the previous frame's;
- ``dH@lag``: ``H_uni - H(x_t | x_{t-lag})`` in nats, the information the code ``lag`` frames back carries
  (lag 3 is the middle of a 5-frame mask span: the nearest visible frame is 1-5 frames away);
- ``dacc@lag``: bigram argmax accuracy minus ``maj``: what that information buys in masked accuracy.

Usage::

    python benchmarks/label_context.py CORPUS LABELS_DIR [LABELS_DIR ...] [--codebooks 3] [--lags 1 3 6]

``LABELS_DIR`` is one teacher's store (``<labels>/<teacher-key>``) or a labels root (every store under it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def stores(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out += [p] if (p / "teacher.json").exists() else sorted(q.parent for q in p.glob("*/teacher.json"))
    return out


def split(seqs: list[np.ndarray], how: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Fit and held-out sequences: halves of every clip in time, or alternate clips."""
    if how == "clips":
        return seqs[::2], seqs[1::2]
    return [x[: len(x) // 2] for x in seqs], [x[len(x) // 2 :] for x in seqs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("labels", nargs="+")
    ap.add_argument("--codebooks", type=int, default=3, help="first N codebooks of each teacher")
    ap.add_argument("--lags", type=int, nargs="+", default=[1, 3, 6])
    ap.add_argument(
        "--split",
        choices=["time", "clips"],
        default="time",
        help="time: count on the first half of every clip, score on the second (like the trainer's validation, "
        "which crops the training clips); clips: count on even clips, score on odd ones (unseen pieces)",
    )
    args = ap.parse_args()

    from mert.data.shards import Corpus
    from mert.train.diagnostics import transition_stats
    from mert.train.labels import open_labels

    corpus = Corpus(args.corpus)
    head = f"{'teacher':38s} {'cb':>2s} {'C':>5s} {'maj':>6s} {'H_uni':>6s} {'same@1':>6s}"
    head += "".join(f" {'dH@' + str(lag):>6s} {'dacc@' + str(lag):>7s}" for lag in args.lags)
    print(head)
    for store in stores(args.labels):
        lab = open_labels(store, corpus)
        codes = [lab.crop(c, 0, c.length).astype(np.int64) for c in corpus.clips]  # (K, T_i) each
        for k in range(min(args.codebooks, lab.n_codebooks)):
            train, test = split([x[k] for x in codes], args.split)
            first = transition_stats(train, test, lab.codebook_size, 1)
            row = f"{store.name:38s} {k:2d} {lab.codebook_size:5d} {first['majority_acc']:6.3f}"
            row += f" {first['unigram_ce']:6.2f} {first['same_rate']:6.3f}"
            for lag in args.lags:
                s = first if lag == 1 else transition_stats(train, test, lab.codebook_size, lag)
                row += f" {s['unigram_ce'] - s['bigram_ce']:6.2f} {s['bigram_acc'] - s['majority_acc']:+7.3f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
