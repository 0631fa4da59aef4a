"""Teacher labelling throughput: the `label_corpus` pipeline vs a plain per-file `model.encode` loop.

Rows, on the same clips (EnCodec 24 kHz at 6 kbps; random-projection weights unless --weights):

* ``plain loop``: what one writes first: for each file, read it and call ``model.encode`` on the
  whole file (one file per forward, no chunking, nothing written).
* ``bare batched encode``: the bound: ``teacher.encode`` on the pipeline's own batches, audio
  already in memory, no I/O or bookkeeping (timed encode calls only).
* ``pipeline``: ``label_corpus`` end to end (read shards, window, batch, encode, assemble, write
  atomically), into an empty labels directory. Goal: within 10% of the bound.

Also prints the agreement of the pipeline's (chunked, batched) labels with the plain loop's, and,
when ``benchmarks/cqt.py`` exists, its CQT rows.

**Teacher comparison** (``--teachers``): every teacher of ``mert label`` on the same corpus, through the same
``label_corpus`` pipeline: ``rvq`` (random-projection EnCodec, 8 x 1024), ``kmeans`` (MFCC, 100 clusters),
``bestrq`` (mel BEST-RQ, MusicFM's 1 x 4096), ``bestrq8`` (8 x 1024), ``bestrq_pb`` / ``bestrq8_pb`` (the same
with ``norm: per_bin``), ``melrvq`` (Mel-RVQ, 8 x 1024). Columns:
setup seconds (building the teacher: EnCodec init, k-means fit, mel statistics, Mel-RVQ fit; not in x real time),
labelling x real time, and the code usage of the labels (mean codes used and entropy over codebooks, the largest
top-code share). ``--corpus DIR`` runs on an ingested corpus (e.g. a rendered real-music one) instead of the
synthetic clips.

**Scaling** (``--scaling``): EnCodec labelling throughput (x real time) vs batch size (``label_corpus`` in this
process, ``--threads`` threads, default 1), and vs worker processes: N concurrent ``mert label`` processes under
``RANK``/``WORLD_SIZE`` (what ``torchrun`` sets; one thread each), each labelling its block of the manifest into the
same store, which is the multi-node path too (docs/teachers.md, "Labelling at corpus scale"). Per N: x real time over
the whole wall time (process start and teacher build included) and over the labelling alone (the slowest rank's
``wall_seconds``), the speed-up over one process, and the 1-min load average. Usage::

    .venv/bin/python benchmarks/teachers.py [--clips 8] [--seconds 40] [--batch 8] [--weights random]
    .venv/bin/python benchmarks/teachers.py --no-encodec --no-cqt --teachers rvq,kmeans,bestrq,bestrq8,melrvq \
        [--corpus data/corpus] [--melrvq-model DIR] [--threads 1]
    .venv/bin/python benchmarks/teachers.py --no-encodec --no-cqt --scaling [--scaling-batches 1,4,8,16] \
        [--scaling-procs 1,2] [--clips 8] [--seconds 15]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mert.data import shards as S
from mert.data.synth import KEYS, TIMBRES, music, write_corpus_arrays
from mert.teachers.base import TargetExtractor, student_frames
from mert.teachers.label_run import label_corpus, plan_windows
from mert.teachers.labels import LabelStore
from mert.teachers.rvq import build_rvq_teacher

SR = 24_000


def write_corpus(root: Path, n: int, seconds: float, seed: int = 0) -> S.Corpus:
    """``n`` synthetic music clips of ``seconds`` +- 20%, two per shard, in the ingested format."""
    rng = np.random.default_rng(seed)

    def clips():
        for i in range(n):
            secs = seconds * rng.uniform(0.8, 1.2)
            x = music(secs, SR, KEYS[i % len(KEYS)], 120.0, list(rng.choice(TIMBRES, 2)), rng, True)
            yield f"{i}.wav", (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32), None

    write_corpus_arrays(root, clips(), SR, per_shard=2)
    return S.Corpus(root)


class NullTeacher(TargetExtractor):
    """Zero-cost teacher with the EnCodec interface: times the pipeline's I/O and bookkeeping alone."""

    name, n_codebooks, codebook_size = "null", 8, 1024

    def encode(self, wav, lengths=None):
        return torch.zeros(wav.shape[0], 8, -(-wav.shape[1] // 320), dtype=torch.long, device=wav.device)

    def config(self):
        return {"n_codebooks": 8}

    def weights_sha256(self):
        return "0" * 64


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def plain_loop(corpus: S.Corpus, teacher, dev: torch.device) -> tuple[tuple[float, float], dict[str, np.ndarray]]:
    """One ``model.encode`` per whole file; returns ((wall, CPU) seconds, codes per clip id)."""
    codes = {}
    sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    for clip in corpus:
        x = torch.from_numpy(corpus.audio(clip)).to(dev)
        if teacher.rpq is None:
            c = teacher.model.encode(x[None, None])[0][0]  # (1, K, F)
        else:  # the random-projection teacher's quantizer replaces the (all-zero) RVQ
            c = teacher.rpq(teacher.model.encoder(x[None, None]))
        codes[clip.id] = c[0, :, : student_frames(clip.length)].cpu().numpy()
    sync(dev)
    return (time.perf_counter() - t0, time.process_time() - c0), codes


def bare_batched(corpus: S.Corpus, teacher, batch: int, dev: torch.device) -> tuple[float, float]:
    """(wall, CPU) encode seconds of the pipeline's own batches with the audio already on the device."""
    ctx = teacher.left_context_frames, teacher.right_context_frames
    windows = [w for i, c in enumerate(corpus.clips) for w in plan_windows(i, c.length, teacher.chunk_frames, *ctx)]
    windows.sort(key=lambda w: -w.length)
    batches = []
    for i in range(0, len(windows), batch):
        group = windows[i : i + batch]
        x = torch.zeros(len(group), max(w.length for w in group))
        for j, w in enumerate(group):
            x[j, : w.length] = torch.from_numpy(corpus.audio(corpus.clips[w.clip], w.start, w.length))
        batches.append((x.to(dev), torch.tensor([w.length for w in group], device=dev)))
    sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    for x, n in batches:
        teacher.encode(x, n).cpu()
    sync(dev)
    return time.perf_counter() - t0, time.process_time() - c0


def pipeline(corpus: S.Corpus, teacher, batch: int, dev: torch.device, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``label_corpus`` into an empty directory (CPU time includes its threads)."""
    c0 = time.process_time()
    # the null teacher's one-code store is refused as untrainable (rightly); it only times the pipeline around it
    s = label_corpus(corpus.root, out, teacher, batch_size=batch, device=str(dev), progress=False,
                     allow_single_code=isinstance(teacher, NullTeacher))  # fmt: skip
    assert s.computed == len(corpus)
    return s.wall_seconds, time.process_time() - c0


def encodec_rows(corpus: S.Corpus, teacher, batch: int, dev: torch.device, tmp: Path, repeats: int) -> list[dict]:
    """Each timing is the best of ``repeats`` (the machine may be shared), interleaved."""
    audio = corpus.total_seconds
    teacher.to(dev)
    teacher.encode(torch.zeros(2, SR, device=dev), torch.tensor([SR, SR], device=dev))  # warm-up
    best = {"plain": (np.inf, np.inf), "bare": (np.inf, np.inf), "pipe": (np.inf, np.inf)}
    for r in range(repeats):
        t, plain_codes = plain_loop(corpus, teacher, dev)
        runs = {"plain": t, "bare": bare_batched(corpus, teacher, batch, dev)}
        runs["pipe"] = pipeline(corpus, teacher, batch, dev, tmp / f"labels-{dev.type}-{r}")
        best = {k: tuple(min(a, b) for a, b in zip(best[k], runs[k])) for k in best}
    store = LabelStore.open(tmp / f"labels-{dev.type}-0")
    agree = np.mean([(store.load(c) == plain_codes[c.id]).mean() for c in corpus])
    name = f"EnCodec {teacher.name}"
    labels = {
        "plain": "plain loop, model.encode per file",
        "bare": "bare batched encode (bound)",
        "pipe": "pipeline label_corpus",
    }
    rows = [
        {"name": f"{name}: {labels[k]} [{dev}]", "x_realtime": audio / w, "wall": w, "cpu": c}
        for k, (w, c) in best.items()
    ]
    (pw, pc), (bw, bc), (lw, _) = best["pipe"], best["bare"], best["plain"]
    null = min(pipeline(corpus, NullTeacher(), batch, dev, tmp / f"null-{dev.type}-{r}")[0] for r in range(repeats))
    rows.append({"name": f"pipeline, zero-cost teacher (I/O + bookkeeping only) [{dev}]", "x_realtime": audio / null})
    ratios = f"pipeline / bound: wall {bw / pw:.3f}, CPU {bc / pc:.3f}; pipeline / plain: wall {lw / pw:.2f}"
    rows.append({"name": f"  {ratios}"})
    rows.append({"name": f"  label agreement pipeline (chunked, batched) vs plain loop = {agree:.5f}"})
    return rows


TEACHER_VARIANTS = {
    "rvq": {"teacher": "rvq"},
    "kmeans": {"teacher": "kmeans"},
    "bestrq": {"teacher": "bestrq"},
    "bestrq8": {"teacher": "bestrq", "bestrq": {"n_codebooks": 8, "codebook_size": 1024}},
    "bestrq_pb": {"teacher": "bestrq", "bestrq": {"norm": "per_bin"}},
    "bestrq8_pb": {"teacher": "bestrq", "bestrq": {"n_codebooks": 8, "codebook_size": 1024, "norm": "per_bin"}},
    "melrvq": {"teacher": "melrvq"},
}


def teacher_params(name: str, melrvq_model: str | None, melrvq_steps: int | None):
    from mert.params import from_dict
    from mert.teachers.config import LabelParams

    spec = {**TEACHER_VARIANTS[name], "device": "cpu"}
    if name == "melrvq":
        spec["melrvq"] = {"model": melrvq_model, **({"steps": melrvq_steps} if melrvq_steps else {})}
    return from_dict(LabelParams, spec)


def teacher_comparison(corpus: S.Corpus, names: list[str], batch: int, tmp: Path, args) -> list[dict]:
    """Build each teacher (timed: setup), label the corpus with ``label_corpus`` (timed), read its code usage."""
    from mert.teachers.build import build_teacher

    rows = []
    for name in names:
        params = teacher_params(name, args.melrvq_model, args.melrvq_steps)
        out = tmp / f"cmp-{name}"
        t0 = time.perf_counter()
        teacher = build_teacher(params, corpus.root, out, progress=False)
        setup = time.perf_counter() - t0
        s = label_corpus(corpus.root, out, teacher, batch_size=batch, device="cpu", progress=False)
        books = list(s.usage["codebooks"].values())
        rows.append(
            {
                "name": f"{name}: {teacher.key}",
                "shape": f"{teacher.n_codebooks} x {teacher.codebook_size}",
                "setup": setup,
                "x_realtime": s.computed_seconds / s.wall_seconds,
                "wall": s.wall_seconds,
                "used": np.mean([u["distinct"] for u in books]),
                "entropy": np.mean([u["entropy_bits"] for u in books]),
                "h_max": np.mean([u["entropy_bits"] / np.log2(u["codebook_size"]) for u in books]),
                "top": max(u["top_share"] for u in books),
            }
        )
    return rows


def print_comparison(rows: list[dict], seconds: float) -> None:
    print(f"\nteachers through label_corpus on {seconds:.0f} s of audio (CPU); code usage of the labels")
    head = ["teacher", "K x C", "setup s", "x realtime", "wall s", "codes used", "H bits", "H/max", "top share"]
    print(f"{head[0]:34s} {head[1]:>11s} " + " ".join(f"{h:>10s}" for h in head[2:]))
    for r in rows:
        cells = [f"{r['setup']:10.1f}", f"{r['x_realtime']:10.1f}", f"{r['wall']:10.1f}", f"{r['used']:10.0f}"]
        cells += [f"{r['entropy']:10.2f}", f"{r['h_max']:10.2f}", f"{r['top']:10.3f}"]
        print(f"{r['name']:34s} {r['shape']:>11s} " + " ".join(cells))


def scaling_rows(corpus: S.Corpus, args, tmp: Path) -> list[dict]:
    """x real time vs batch size (this process) and vs concurrent ``mert label`` processes (one thread each)."""
    rows = []
    threads = torch.get_num_threads()
    teacher = build_rvq_teacher(args.weights)
    for b in (int(v) for v in args.scaling_batches.split(",")):
        load = os.getloadavg()[0]
        s = label_corpus(corpus.root, tmp / f"scale-b{b}", teacher, batch_size=b, device="cpu", progress=False)
        rows.append({"kind": "batch", "batch": b, "procs": 1, "threads": threads, "x_realtime": s.x_realtime,
                     "wall": s.wall_seconds, "load": load})  # fmt: skip
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for n in (int(v) for v in args.scaling_procs.split(",")):
        out, load = tmp / f"scale-p{n}", os.getloadavg()[0]
        cmd = [sys.executable, "-m", "mert.cli", "label", str(corpus.root), str(out), "--teacher", "rvq", "--weights",
               args.weights, "--device", "cpu", "--batch-size", str(args.batch), "--no-progress", "--json"]  # fmt: skip
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "WORLD_SIZE": str(n)}, cwd=repo,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(n)]  # fmt: skip
        outs = [p.communicate() for p in procs]
        wall = time.perf_counter() - t0
        bad = [err.decode()[-500:] for p, (_, err) in zip(procs, outs) if p.returncode]
        if bad:
            raise RuntimeError(f"mert label failed under WORLD_SIZE={n}: {bad[0]}")
        sums = [json.loads(o) for o, _ in outs]
        audio = sum(x["computed_seconds"] for x in sums)
        rows.append({"kind": "procs", "batch": args.batch, "procs": n, "threads": 1, "x_realtime": audio / wall,
                     "x_realtime_labelling": audio / max(x["wall_seconds"] for x in sums), "wall": wall,
                     "load": load})  # fmt: skip
    return rows


def print_scaling(rows: list[dict], seconds: float) -> None:
    print(f"\nEnCodec labelling scaling on {seconds:.0f} s of audio (CPU; random-projection teacher)")
    head = ["run", "processes", "threads each", "batch", "x real time (wall)", "x real time (labelling)", "x 1 process"]
    print("| " + " | ".join([*head, "load 1-min"]) + " |\n|" + "---|" * (len(head) + 1))
    base = next((r for r in rows if r["kind"] == "procs" and r["procs"] == 1), None)
    for r in rows:
        run = "label_corpus in this process" if r["kind"] == "batch" else f"mert label, RANK 0..{r['procs'] - 1}"
        lab = r.get("x_realtime_labelling", r["x_realtime"])
        x1 = f"{r['x_realtime'] / base['x_realtime']:.2f}" if r["kind"] == "procs" and base else ""
        print(f"| {run} | {r['procs']} | {r['threads']} | {r['batch']} | {r['x_realtime']:.1f} | {lab:.1f} | {x1} | "
              f"{r['load']:.1f} |")  # fmt: skip


def cqt_rows(seconds: float, batch: int) -> list[dict]:
    path = Path(__file__).with_name("cqt.py")
    if not path.exists():
        return [{"name": "CQT: benchmarks/cqt.py not found (skipped)"}]
    spec = importlib.util.spec_from_file_location("benchmarks_cqt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [{**r, "name": f"CQT {r['name']}"} for r in mod.run(seconds=seconds, batch=batch)]


def print_rows(rows: list[dict]) -> None:
    cols = [("x_realtime", "x realtime", 10, ".1f"), ("wall", "wall s", 8, ".1f"), ("cpu", "CPU s", 8, ".1f")]
    cols += [("ms_per_clip", "ms/clip", 8, ".1f"), ("max_rel_err", "max rel err", 11, ".2e")]
    print(f"{'':78s} " + " ".join(f"{h:>{w}s}" for _, h, w, _ in cols))
    for r in rows:
        cells = [f"{r[k]:{w}{f}}" if k in r else " " * w for k, _, w, f in cols]
        print(f"{r['name']:78s} " + " ".join(cells).rstrip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=40.0, help="mean clip length (long clips are chunked)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--weights", default="random", help="random | pretrained | PATH")
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each EnCodec timing")
    ap.add_argument("--cqt-seconds", type=float, default=5.0)
    ap.add_argument("--no-cqt", action="store_true")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (1 is steadier on a shared machine)")
    ap.add_argument("--no-encodec", action="store_true", help="skip the EnCodec pipeline-vs-loop rows")
    ap.add_argument("--teachers", default="", help="comma list of " + ",".join(TEACHER_VARIANTS) + " to compare")
    ap.add_argument("--corpus", type=Path, help="an ingested corpus to use instead of synthetic clips")
    ap.add_argument("--melrvq-model", help="a fitted Mel-RVQ dir (default: fit on the corpus, timed as setup)")
    ap.add_argument("--melrvq-steps", type=int, help="fit steps when no --melrvq-model (default: params default)")
    ap.add_argument("--scaling", action="store_true", help="x real time vs batch size and vs worker processes")
    ap.add_argument("--scaling-batches", default="1,4,8,16", help="batch sizes of the in-process rows")
    ap.add_argument("--scaling-procs", default=None, help="concurrent mert label processes (default: 1..CPUs)")
    args = ap.parse_args()
    if args.scaling_procs is None:
        args.scaling_procs = ",".join(str(n) for n in range(1, len(os.sched_getaffinity(0)) + 1))
    if args.scaling and not args.threads:
        args.threads = 1  # a row per process count is only comparable with one thread per process
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows, comparison, scaling = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        if args.corpus:
            corpus = S.Corpus(args.corpus)
        else:
            corpus = write_corpus(Path(tmp) / "corpus", args.clips, args.seconds)
        print(f"{len(corpus)} clips, {corpus.total_seconds:.0f} s of audio, batch {args.batch}")
        if not args.no_encodec:
            teacher = build_rvq_teacher(args.weights)
            for dev in devices:
                rows += encodec_rows(corpus, teacher, args.batch, dev, Path(tmp), args.repeats)
        if args.teachers:
            names = [n for n in args.teachers.split(",") if n]
            comparison = teacher_comparison(corpus, names, args.batch, Path(tmp), args)
        if args.scaling:
            scaling = scaling_rows(corpus, args, Path(tmp))
    if not args.no_cqt:
        rows += cqt_rows(args.cqt_seconds, args.batch)
    if rows:
        print_rows(rows)
    if comparison:
        print_comparison(comparison, corpus.total_seconds)
    if scaling:
        print_scaling(scaling, corpus.total_seconds)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
