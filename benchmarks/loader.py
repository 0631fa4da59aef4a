"""Pretraining loader throughput per worker count: can the loader keep a GPU fed?

Builds a corpus of synthetic clips in the ingested format (float32 ``.npy`` shards, memory-mapped on read) and a
label store with random 8 x 1024 codes (``LabelStore``, one uint16 pack per audio shard, read through
``mert.train.labels.StoreLabels`` as ``mert pretrain`` reads it), then times :class:`mert.train.data.PretrainLoader`
as the trainer iterates it, for each worker count:

* ``0``: the background thread the trainer uses with ``loader_workers: 0`` (one core at most);
* ``N >= 1``: ``N`` loader processes (``torch.utils.data.DataLoader`` workers).

Each row is timed ``--repeats`` times (interleaved over the worker counts, so a load change hits every row alike);
a timing is ``--batches`` micro-batches after ``--warmup`` steps (process start-up and the page cache are not in
it). It prints audio-s/s (min / median / max), the per-worker rate (median / workers), the speed-up over one worker,
the CPU time per micro-batch summed over every process and thread (constant in the worker count when nothing
serialises: the speed-up is then bounded by free cores alone), the 1-min load average around each row, and the
workers a GPU consuming ``--target`` audio-s/s needs at the one-worker rate (a projection: a GPU host's cores are
usually faster and not shared). A last line splits one micro-batch's build time into the label reads and the rest.

Usage::

    .venv/bin/python benchmarks/loader.py [--profile mert-95m] [--workers 0,1,2] [--batches 300] [--repeats 3]
        [--clips 96] [--seconds 24] [--target 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mert.data import shards as S
from mert.data.synth import write_corpus_arrays
from mert.teachers.base import student_frames
from mert.teachers.labels import LabelStore
from mert.train.data import CropSampler, PretrainLoader, loader_throughput
from mert.train.labels import StoreLabels
from mert.train.params import PROFILES
from mert.utils.io import sha256_json

SR = 24_000


def write_corpus(root: Path, n: int, seconds: float, seed: int = 0, per_shard: int = 8, dtype: str = "float32",
                 ) -> S.Corpus:  # fmt: skip
    """``n`` noise clips of ``seconds`` x U(0.5, 1.5) (at least 3 s), ``per_shard`` per shard, ingested format
    (``dtype`` shards: float32, or int16 PCM)."""
    rng = np.random.default_rng(seed)

    def clips():
        for i in range(n):
            length = int(max(3.0, seconds * rng.uniform(0.5, 1.5)) * SR)
            yield f"{i}.wav", (0.1 * rng.standard_normal(length)).astype(np.float32), sha256_json([seed, i, length])

    write_corpus_arrays(root, clips(), SR, per_shard, shard_dtype=dtype)
    return S.Corpus(root)


def write_labels(root: Path, corpus: S.Corpus, k: int = 8, c: int = 1024) -> StoreLabels:
    """A label store of random codes for every clip (the shape EnCodec's store has), with its usage.json."""
    ident = {"name": "bench-random", "config": {"n_codebooks": k, "codebook_size": c}}
    ident["hash"] = sha256_json(ident)
    store = LabelStore.create(root, "bench-random", ident)
    rng = np.random.default_rng(1)
    by_shard: dict[str, list] = {}
    for clip in corpus.clips:
        by_shard.setdefault(clip.shard, []).append(clip)
    for shard, clips in by_shard.items():  # one pack per audio shard (the store's default layout)
        codes = [rng.integers(0, c, (k, student_frames(x.length)), dtype=np.uint16) for x in clips]
        store.write_shard(shard, clips, codes, [""] * len(clips), corpus.sample_rate)
    store.write_usage(corpus.clips, c)
    return StoreLabels(store, corpus)


def time_row(sampler: CropSampler, workers: int, batches: int, warmup: int, prefetch: int) -> dict[str, float]:
    """One loader over ``batches`` micro-batches after ``warmup`` steps: audio-s/s delivered, start-up seconds, and
    CPU milliseconds per micro-batch over every process and thread (start-up and warm-up included)."""
    loader = PretrainLoader(sampler, prefetch=prefetch, workers=workers)
    before = os.times()
    rates = loader_throughput(loader, n_steps=batches // loader.accum, warmup=warmup)
    after = os.times()  # the loader processes were joined: their CPU time is in children_*
    cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system"))
    n = (batches // loader.accum + warmup) * loader.accum
    return {"rate": rates["audio_sec_per_sec"], "startup": rates["startup_sec"], "cpu_ms": 1000 * cpu / n}


def split_build(sampler: CropSampler, n: int = 60) -> dict[str, float]:
    """Median milliseconds per micro-batch built in this process: the whole build, and its label reads alone
    (the same crops, read again right after; every label file's one-time range check already done)."""
    whole, labels = [], []
    for i in range(n):
        step = 1000 + i
        for p in sampler.positions(step, 0):  # first loads (range checks) out of the timing
            clip = sampler.clip_at(p)
            sampler.labels.crop(clip, 0, clip.length // 320 * 320)
        t0 = time.perf_counter()
        b = sampler.batch(step, 0)
        t1 = time.perf_counter()
        length = b.wav.shape[1]
        for p in sampler.positions(step, 0):
            clip = sampler.clip_at(p)
            sampler.labels.crop(clip, sampler.crop_start(p, clip.length, length), length)
        t2 = time.perf_counter()
        whole.append(t1 - t0)
        labels.append(t2 - t1)
    w, lab = 1000 * statistics.median(whole), 1000 * statistics.median(labels)
    return {"batch_ms": w, "labels_ms": lab, "audio_and_rest_ms": w - lab}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="mert-95m", choices=sorted(PROFILES), help="crop and micro-batch size")
    ap.add_argument("--workers", default=None, help="comma list (default: 0,1,..,CPUs)")
    ap.add_argument("--batches", type=int, default=300, help="timed micro-batches per row")
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps first (start-up, page cache)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefetch", type=int, default=2, help="thread: steps ahead; workers: micro-batches each")
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--seconds", type=float, default=24.0, help="mean clip length")
    ap.add_argument("--target", type=float, default=3000.0, help="audio-s/s a GPU consumes (projection)")
    ap.add_argument("--shard-dtype", default="float32", choices=["float32", "int16"], help="synthetic corpus shards")
    ap.add_argument("--corpus", type=Path, help="an ingested corpus instead of synthetic clips (with --labels)")
    ap.add_argument("--labels", help="its label store (mert label output) or hash:K:C")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cpus = len(os.sched_getaffinity(0))
    counts = [int(w) for w in args.workers.split(",")] if args.workers else list(range(cpus + 1))
    prof = PROFILES[args.profile]
    with tempfile.TemporaryDirectory(prefix="mert-loader-bench-") as tmp:
        if args.corpus:
            from mert.train.labels import open_labels

            corpus = S.Corpus(args.corpus)
            labels = open_labels(args.labels or "hash:8:1024", corpus)
        else:
            corpus = write_corpus(Path(tmp) / "corpus", args.clips, args.seconds, dtype=args.shard_dtype)
            labels = write_labels(Path(tmp) / "labels", corpus)
        sampler = CropSampler(corpus, labels, prof.crop_samples, prof.min_clip_samples, prof.micro_batch_clips)
        batch_s = prof.micro_batch_clips * prof.crop_seconds
        print(
            f"torch {torch.__version__}, {cpus} CPUs, profile {args.profile}: micro-batch {prof.micro_batch_clips} x "
            f"{prof.crop_seconds:g} s = {batch_s:g} audio-s; corpus {len(corpus)} clips ({corpus.dtype} shards), "
            f"{corpus.total_seconds / 60:.1f} min; {args.batches} micro-batches per timing, "
            f"{args.repeats} repeats interleaved"
        )
        for path in sorted((Path(corpus.root) / S.SHARD_DIR).glob("*.npy")):  # page cache: as a long run has it
            path.read_bytes()
        rates: dict[int, list[float]] = {w: [] for w in counts}
        loads: dict[int, list[float]] = {w: [] for w in counts}
        startup: dict[int, list[float]] = {w: [] for w in counts}
        cpu: dict[int, list[float]] = {w: [] for w in counts}
        for _ in range(args.repeats):
            for w in counts:
                before = os.getloadavg()[0]
                r = time_row(sampler, w, args.batches, args.warmup, args.prefetch)
                rates[w].append(r["rate"])
                startup[w].append(r["startup"])
                cpu[w].append(r["cpu_ms"])
                loads[w] += [before, os.getloadavg()[0]]
        split = split_build(sampler)
    rows = []
    one = statistics.median(rates[1]) if 1 in rates else None
    for w in counts:
        med = statistics.median(rates[w])
        rows.append(
            {
                "workers": w,
                "audio_s_per_s_min": min(rates[w]),
                "audio_s_per_s_median": med,
                "audio_s_per_s_max": max(rates[w]),
                "per_worker": med / max(w, 1),
                "vs_one_worker": med / one if one else None,
                "startup_s": statistics.median(startup[w]),
                "cpu_ms_per_batch": statistics.median(cpu[w]),
                "load_min": min(loads[w]),
                "load_max": max(loads[w]),
            }
        )
    head = ["workers", "audio-s/s min", "median", "max", "per worker", "x 1 worker", "CPU ms/batch", "start-up s"]
    head += ["load 1-min"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        name = "0 (thread)" if r["workers"] == 0 else str(r["workers"])
        x1 = f"{r['vs_one_worker']:.2f}" if r["vs_one_worker"] else ""
        cells = [f"{r[k]:,.0f}" for k in ("audio_s_per_s_min", "audio_s_per_s_median", "audio_s_per_s_max")]
        cells += [f"{r['per_worker']:,.0f}", x1, f"{r['cpu_ms_per_batch']:.1f}", f"{r['startup_s']:.2f}"]
        cells += [f"{r['load_min']:.1f}-{r['load_max']:.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    projection = None
    if one:
        projection = math.ceil(args.target / one)
        print(
            f"\nprojection: a GPU consuming {args.target:,.0f} audio-s/s needs {projection} loader workers at the "
            f"one-worker rate measured here ({one:,.0f} audio-s/s = {one / batch_s:.1f} micro-batches/s per worker), "
            "plus one core for the training process"
        )
    print(
        f"\none micro-batch ({prof.micro_batch_clips} crops), built in this process: {split['batch_ms']:.2f} ms, of "
        f"which label reads {split['labels_ms']:.2f} ms ({100 * split['labels_ms'] / split['batch_ms']:.0f}%), "
        f"audio copy and the rest {split['audio_and_rest_ms']:.2f} ms"
    )
    print(f"load average now: {os.getloadavg()[0]:.2f}")
    if args.json:
        out = {"profile": args.profile, "cpus": cpus, "rows": rows, "projected_workers": projection, "split": split}
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
