"""Cost of the data layer versus corpus size N: does anything grow faster than N, or per step at all?

For each N (default 10^3 .. 10^6 clips, ``--per-shard`` clips per shard, each ``--clip-seconds`` long) it writes a
synthetic corpus in the ingested layout with **sparse** shard files (a valid ``.npy`` header, then a hole: no disk
is used, reads return zeros) and a manifest, then, in a fresh process per N (so peak RSS is that N's alone):

* ``open (cold)``: the first ``Corpus(root)`` (verification included), alone in a process; on this code it also
  builds ``table/`` from the CSV (which ingestion normally writes). Reference: ``pandas.read_csv`` of the manifest.
* ``open (warm)``: the next ``Corpus(root)``, in the measuring process (what every rank and every stage pays).
* ``sampler``: ``CropSampler`` construction plus its ``fingerprint()`` (run identity / resume check). Reference:
  SHA-256 of N x 16 bytes (the floor of hashing the clip ids).
* ``label open+check``: opening the label store and the before-training checks (``open_labels`` ->
  ``check_store``), when a store layout that scales can be written here (``--labels``; the packed layout, or
  the per-clip one up to ``--per-clip-max`` clips). Reference: reading the store's ``usage.json``.
* ``first batch`` and ``ms / micro-batch``: the rank's loader (``PretrainLoader``, in the caller) delivering
  ``--steps`` micro-batches of ``--micro`` 5-s crops with their labels, first with pages never read (``cold``: the
  kernel fills sparse holes with zero pages, a stand-in for storage), then the same steps again (page cache warm:
  only our code path). Reference: the same warm crops read the plainest way (open, ``preadv``, close), audio only.
* ``RSS rank``: resident set of that process after setup and the steps (and its peak, a cold open included);
  ``RSS worker``: peak (and proportional, PSS) resident set of each of ``--workers`` loader processes (forked: they
  share the rank's pages) after ``--steps`` steps. The references are measured after these figures.
* ``run identity``: what ``mert pretrain`` reads from the corpus for the run identity (manifest hash, clip ids).
* ``ingest re-run``: for N in ``--ingest-sizes`` real (tiny) WAV files, the unchanged re-run of ``mert ingest``.
  Reference: walking and stat-ing the same tree (``os.walk`` + ``os.stat``).

Usage::

    .venv/bin/python benchmarks/scale.py [--sizes 1e3,1e4,1e5,1e6] [--ingest-max 1e5] [--workdir /tmp/scale]
        [--json out.json]

Run on an older commit by pointing ``PYTHONPATH`` at its tree (features it lacks are reported as ``n/a``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SR = 24_000
CROP = 5 * SR
HEADER = 128  # bytes of the .npy header of every synthetic shard (checked in write_sparse_corpus)


def _t(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return time.perf_counter() - t, out


# ------------------------------------------------------------------------------------------------ synthetic corpus
def write_sparse_corpus(root: Path, n: int, per_shard: int, clip_seconds: float) -> None:
    """``n`` clips of ``clip_seconds`` in sparse float32 shards of ``per_shard`` clips, and ``manifest.csv``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "shards").mkdir(exist_ok=True)
    length = int(clip_seconds * SR)
    shard_len = per_shard * length
    header = _npy_header(shard_len, "<f4")
    assert len(header) == HEADER
    n_shards = -(-n // per_shard)
    for s in range(n_shards):
        k = min(per_shard, n - s * per_shard)
        with open(root / "shards" / f"shard-{s:05d}.npy", "wb") as f:
            f.write(_npy_header(k * length, "<f4") if k != per_shard else header)
            f.truncate(len(header) + 4 * k * length)
    lines = ["id,source,sha256,duration_s,orig_sr,channels,format,shard,offset,length\r\n"]
    for i in range(n):
        sha = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        s, j = divmod(i, per_shard)
        lines.append(f"{sha[:16]},music/{i // 1000:04d}/track-{i:07d}.flac,{sha},{clip_seconds},44100,2,FLAC,"
                     f"shard-{s:05d}.npy,{j * length},{length}\r\n")  # fmt: skip
    (root / "manifest.csv").write_text("".join(lines))
    (root / "corpus.json").write_text(json.dumps({"format_version": 1, "sample_rate": SR}))


def _npy_header(samples: int, dtype: str) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": (samples,)})
    return buf.getvalue()


def write_labels(corpus, labels_dir: Path, per_clip_max: int) -> str:
    """A label store for ``corpus`` with random codes: packed if this code has it, else per clip (small N)."""
    from mert.teachers import labels as L
    from mert.teachers.base import student_frames

    ident = {"name": "bench", "config": {"n_codebooks": 8, "codebook_size": 1024}}
    ident["hash"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    rng = np.random.default_rng(0)
    if hasattr(L.LabelStore, "write_shard"):
        store = L.LabelStore.create(labels_dir, "bench-" + ident["hash"][:12], ident)
        bounds = np.searchsorted(np.asarray(corpus.table.shard), np.arange(len(corpus.shard_names) + 1))
        for s, name in enumerate(corpus.shard_names):
            clips = [corpus.clips[int(r)] for r in range(bounds[s], bounds[s + 1])]
            codes = [rng.integers(0, 1024, (8, student_frames(c.length)), dtype=np.uint16) for c in clips]
            store.write_shard(name, clips, codes, [""] * len(clips), SR)
        store.write_usage(corpus.clips, 1024)
        return "packed"
    if len(corpus.clips) > per_clip_max:
        return ""
    store = L.LabelStore.create(labels_dir, "bench-" + ident["hash"][:12], ident)
    for c in corpus.clips:
        store.write(c, rng.integers(0, 1024, (8, student_frames(c.length)), dtype=np.uint16), SR)
    store.write_usage(list(corpus.clips), 1024)
    return "per-clip"


# ------------------------------------------------------------------------------------------------ one N, measured
def measure(root: Path, labels_dir: Path | None, steps: int, micro: int, workers: int) -> dict:
    """Everything but ingestion, for the corpus at ``root`` (run in a fresh process)."""
    import pandas as pd

    from mert.data import shards as S
    from mert.train.data import CropSampler, PretrainLoader
    from mert.train.labels import HashLabels, open_labels

    r: dict = {}
    r["open_warm"], corpus = _t(S.Corpus, root)
    r["table_bytes_per_clip"] = table_bytes_per_clip(root)
    r["identity"], ids = _t(_identity, corpus)
    labels, r["labels"] = HashLabels(8, 1024), "hash"
    if labels_dir is not None and any(labels_dir.glob("*/teacher.json")):
        r["label_open"], labels = _t(open_labels, labels_dir, corpus)
        r["labels"] = "store"
        r["ref_usage_json"], _ = _t(lambda: json.loads(next(labels_dir.glob("*/usage.json")).read_text()))

    def sampler():
        smp = CropSampler(corpus, labels, CROP, CROP, micro, seed=0)
        smp.fingerprint()
        return smp

    r["sampler"], smp = _t(sampler)
    loader = PretrainLoader(smp, prefetch=0)
    it = iter(loader)
    r["first_batch"], _ = _t(next, it)
    t = time.perf_counter()
    for _ in range(steps):  # steps 1..steps, pages not read before (sparse holes: the kernel's zero pages)
        next(it)
    r["ms_batch_cold"] = 1e3 * (time.perf_counter() - t) / steps
    loader.load_state_dict(loader.state_dict() | {"next_step": 1})
    it = iter(loader)
    t = time.perf_counter()
    for _ in range(steps):  # the same steps again: page cache warm, only our code path is left
        next(it)
    r["ms_batch"] = 1e3 * (time.perf_counter() - t) / steps
    r["ref_ms_batch"] = 1e3 * _bare_crops(corpus, smp, steps, micro) / steps
    import psutil

    r["rss_rank_mb"] = psutil.Process().memory_info().rss / 2**20  # after setup and the steps
    r["peak_rss_rank_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if workers:
        r.update(_worker_rss(smp, workers, steps))
    r["fds_open"] = len(os.listdir("/proc/self/fd"))
    r["ref_read_csv"], df = _t(pd.read_csv, root / "manifest.csv")  # the references last: not in the RSS above
    r["ref_sha_ids"], _ = _t(hashlib.sha256, "".join(df["id"].astype(str)).encode())
    return r


def _identity(corpus) -> list[str]:
    """What a run's identity reads from the corpus: the manifest's hash and every clip id."""
    from mert.train import identity as idn
    from mert.utils.io import sha256_file

    if hasattr(idn, "_manifest_sha256"):
        idn._manifest_sha256(corpus)
        return corpus.clips.ids() if hasattr(corpus.clips, "ids") else np.char.decode(corpus.table.id, "ascii").tolist()
    sha256_file(Path(corpus.root) / "manifest.csv")
    return [c.id for c in corpus.clips]


def _bare_crops(corpus, smp, steps: int, micro: int) -> float:
    """The audio of the same micro-batches (steps 1..steps, page cache warm) read the plainest way: open the
    shard, ``os.preadv`` the crop's bytes into the batch, close. The floor of reading the crops: no labels, no
    sampler, no cache.
    """
    t = time.perf_counter()
    for step in range(1, steps + 1):
        pos, clips, length = smp.layout(step, 0)
        wav = np.empty((micro, length), np.float32)
        for i, (p, c) in enumerate(zip(pos, clips)):
            first = c.offset + smp.crop_start(p, c.length, length)
            fd = os.open(corpus.root / "shards" / c.shard, os.O_RDONLY)
            try:
                os.preadv(fd, [memoryview(wav[i]).cast("B")], HEADER + 4 * first)
            finally:
                os.close(fd)
    return time.perf_counter() - t


def _worker_rss(smp, workers: int, steps: int) -> dict:
    """Peak RSS and PSS (MB) of each loader process after ``steps`` steps."""
    import psutil

    from mert.train.data import PretrainLoader

    loader = PretrainLoader(smp, prefetch=2, workers=workers)
    it = iter(loader)
    for _ in range(steps):
        next(it)
    hwm, pss = [], []
    for child in psutil.Process().children(recursive=True):
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
            hwm.append(int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]) / 1024)
            pss.append(child.memory_full_info().pss / 2**20)
        except (psutil.Error, OSError, StopIteration):
            continue
    it.close()
    return {"rss_worker_mb": max(hwm, default=float("nan")), "pss_worker_mb": max(pss, default=float("nan"))}


# ------------------------------------------------------------------------------------------------ ingestion
def ingest_rerun(work: Path, n: int) -> dict:
    """The unchanged re-run of ``mert ingest`` over ``n`` tiny WAV files (0.2 s, 8 kHz, 16-bit), 2 decoding
    processes (what ``workers: 0`` picks on 2 cores for a large input)."""
    import soundfile as sf

    from mert.data.ingest import IngestParams, ingest

    src = work / f"ingest-src-{n}"
    if not (src / ".complete").exists():
        shutil.rmtree(src, ignore_errors=True)
        rng = np.random.default_rng(n)
        for i in range(n):
            d = src / f"{i // 1000:04d}"
            d.mkdir(parents=True, exist_ok=True)
            sf.write(d / f"{i:07d}.wav", (0.1 * rng.standard_normal(1600)).astype(np.float32), 8000, "PCM_16")
        (src / ".complete").write_text("")
    out = work / f"ingest-out-{n}"
    shutil.rmtree(out, ignore_errors=True)
    p = IngestParams(min_seconds=0.1, workers=2)  # a process pool, as on any multi-core machine
    first, s1 = _t(ingest, src, out, p, progress=False)
    rerun, s2 = _t(ingest, src, out, p, progress=False)
    assert s2.unchanged == n, (s2.unchanged, n)

    def walk():
        k = 0
        for dp, _, fs in os.walk(src):
            for f in fs:
                os.stat(os.path.join(dp, f))
                k += 1
        return k

    ref, _ = _t(walk)
    return {"ingest_first": first, "ingest_rerun": rerun, "ref_walk_stat": ref, "ingested": s1.ingested}


# ------------------------------------------------------------------------------------------------ driver
ROWS = [
    ("open (cold)", "open_cold", "s", "ref_read_csv", "pandas.read_csv"),
    ("open (warm)", "open_warm", "s", "ref_read_csv", "pandas.read_csv"),
    ("run identity (manifest hash + clip ids)", "identity", "s", None, ""),
    ("sampler + fingerprint", "sampler", "s", "ref_sha_ids", "sha256(ids)"),
    ("label open + checks", "label_open", "s", "ref_usage_json", "read usage.json"),
    ("first batch", "first_batch", "s", None, ""),
    ("ms / micro-batch, cold pages", "ms_batch_cold", "ms", None, ""),
    ("ms / micro-batch, warm", "ms_batch", "ms", "ref_ms_batch", "bare open + preadv + close per crop"),
    ("RSS rank after setup + steps", "rss_rank_mb", "MB", None, ""),
    ("peak RSS rank", "peak_rss_rank_mb", "MB", None, ""),
    ("peak RSS of the cold open", "peak_rss_cold_open_mb", "MB", None, ""),
    ("peak RSS loader worker", "rss_worker_mb", "MB", None, ""),
    ("PSS loader worker", "pss_worker_mb", "MB", None, ""),
    ("ingest first run", "ingest_first", "s", "ref_walk_stat", "os.walk + stat"),
    ("ingest unchanged re-run", "ingest_rerun", "s", "ref_walk_stat", "os.walk + stat"),
]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def print_table(results: dict[int, dict]) -> str:
    sizes = sorted(results)
    head = "| cost | unit | " + " | ".join(f"N={n:.0e}" for n in sizes) + " | reference (same run) |"
    lines = [head, "|" + "---|" * (len(sizes) + 3)]
    for label, key, unit, ref, refname in ROWS:
        if not any(key in results[n] for n in sizes):
            continue
        cells = []
        for n in sizes:
            r = results[n]
            c = _fmt(r.get(key))
            if ref and r.get(ref) is not None and key in r:
                c += f" ({_fmt(r[ref])})"
            cells.append(c)
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + f" | {refname or '-'} |")
    extra = {n: results[n].get("labels", "?") for n in sizes}
    lines.append(f"\nlabel source per N: {extra}; reference figures in parentheses")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e3,1e4,1e5,1e6")
    ap.add_argument("--per-shard", type=int, default=20)
    ap.add_argument("--clip-seconds", type=float, default=30.0)
    ap.add_argument("--ingest-sizes", default="1e3,1e4", help="N of the ingestion rows (real files; '' for none)")
    ap.add_argument("--per-clip-max", type=float, default=1e4, help="largest N for a per-clip label store")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/mert-scale")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plan-hours", type=float, default=160_000, help="the corpus to lay out (0: no plan)")
    ap.add_argument("--plan-clip-seconds", type=float, default=240.0, help="mean track length of that corpus")
    ap.add_argument("--plan-shard-seconds", type=float, default=3600.0)
    ap.add_argument("--gpu-rate", type=float, default=3000.0, help="audio-s/s one GPU consumes")
    ap.add_argument("--worker-rate", type=float, default=None, help="audio-s/s of one loader worker (loader.py)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cold", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    if args.cold:  # child: the first open of a corpus (table built from the CSV on this code), alone in a process
        from mert.data import shards as S

        t, _ = _t(S.Corpus, Path(args.cold))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"open_cold": t, "peak_rss_cold_open_mb": peak}))
        return
    if args.one:  # child: measure one N
        root = Path(args.one)
        lab = root.parent / (root.name + "-labels")
        print(json.dumps(measure(root, lab if lab.exists() else None, args.steps, args.micro, args.workers)))
        return
    results: dict[int, dict] = {}
    for n in (int(float(x)) for x in args.sizes.split(",") if x):
        root = work / f"corpus-{n}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work / f"corpus-{n}-labels", ignore_errors=True)
        t_write, _ = _t(write_sparse_corpus, root, n, args.per_shard, args.clip_seconds)
        r: dict = {"write_corpus": t_write}
        from mert.data import shards as S

        corpus0 = S.Corpus(root, verify=False)
        t_lab, kind = _t(write_labels, corpus0, work / f"corpus-{n}-labels", int(args.per_clip_max))
        r["write_labels"], r["label_layout"] = t_lab, kind
        if not kind:
            shutil.rmtree(work / f"corpus-{n}-labels", ignore_errors=True)
        _drop_table(root)  # the first child's open is the cold one; the measuring child's is warm, as a rank's is
        one = ["--one", str(root), "--steps", str(args.steps), "--micro", str(args.micro)]
        one += ["--workers", str(args.workers)]
        for cmd in ([sys.executable, __file__, "--cold", str(root)], [sys.executable, __file__, *one]):
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                r["error"] = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"
                break
            r.update(json.loads(out.stdout.strip().splitlines()[-1]))
        results[n] = r
        print(f"N={n}: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}),
              flush=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work / f"corpus-{n}-labels", ignore_errors=True)
    for n in (int(float(x)) for x in args.ingest_sizes.split(",") if x):
        results.setdefault(n, {}).update(ingest_rerun(work, n))
        print(f"N={n}: " + json.dumps({k: round(v, 4) for k, v in results[n].items() if "ingest" in k}), flush=True)
    rates = hash_rates()
    print()
    print_table(results)
    print(f"\nhash rates, one core: {json.dumps({k: round(v) for k, v in rates.items()})}")
    if args.plan_hours:
        print(f"\n{args.plan_hours:,.0f} hours laid out with these measurements:\n")
        plan(results, rates, args.plan_hours, args.plan_clip_seconds, args.plan_shard_seconds, args.gpu_rate,
             args.worker_rate)  # fmt: skip
    if args.json:
        out = {"results": {str(k): v for k, v in results.items()}, "hash_rates": rates}
        Path(args.json).write_text(json.dumps(out, indent=1))


def hash_rates(mb: int = 256) -> dict:
    """MB/s of one core for MD5 (what DVC hashes with) and SHA-256 (what ingestion hashes sources with)."""
    buf = np.random.default_rng(0).integers(0, 255, mb * 2**20, dtype=np.uint8).tobytes()
    out = {}
    for name in ("md5", "sha256"):
        t, _ = _t(lambda n=name: hashlib.new(n, buf).digest())
        out[f"{name}_mb_s"] = mb * 2**20 / 1e6 / t
    return out


def table_bytes_per_clip(root: Path) -> float | None:
    """Bytes of ``table/`` per clip (this code's columnar table), for the layout plan."""
    d = root / "table"
    if not (d / "table.json").exists():
        return None
    rows = json.loads((d / "table.json").read_text())["rows"]
    return sum(f.stat().st_size for f in d.iterdir()) / max(rows, 1)


def plan(results: dict[int, dict], rates: dict, hours: float, clip_s: float, shard_s: float, gpu_rate: float,
         worker_rate: float | None) -> str:  # fmt: skip
    """The corpus of ``hours`` laid out, with the measured rates: a Markdown table (see docs/scale.md)."""
    seconds = hours * 3600
    clips = seconds / clip_s
    shards = seconds / shard_s
    big = results[max(results)]
    per_clip = big.get("table_bytes_per_clip") or float("nan")
    label_bytes = seconds * 75 * 8 * 2  # 8 codebooks x 75 Hz x uint16
    rows = [
        ("audio", f"{hours:,.0f} h = {seconds:.3g} s at 24 kHz", ""),
        (f"clips (tracks of ~{clip_s:g} s)", f"{clips:,.0f}", "manifest rows"),
        (f"shards of {shard_s:g} s", f"{shards:,.0f}", "files"),
        ("shard bytes, float32", f"{seconds * SR * 4 / 1e12:,.1f} TB", f"{shard_s * SR * 4 / 1e6:,.0f} MB per shard"),
        ("shard bytes, int16", f"{seconds * SR * 2 / 1e12:,.1f} TB", f"{shard_s * SR * 2 / 1e6:,.0f} MB per shard"),
        ("manifest.csv", f"~{clips * 150 / 1e9:,.2f} GB", "~150 B per row"),
        ("table/ (memory-mapped)", f"{clips * per_clip / 1e9:,.2f} GB", f"{per_clip:.0f} B per clip, measured"),
        ("labels, 8 x 1024 at 75 Hz (uint16)", f"{label_bytes / 1e9:,.0f} GB", "1,200 B per audio-second"),
        ("label files, packed", f"{2 * shards:,.0f}", "a pack + its record per audio shard"),
        ("label files, per clip (old layout)", f"{2 * clips:,.0f}", ".npy + .json per clip"),
        ("inodes (shards + packs + records)", f"{3 * shards:,.0f}", ""),
    ]
    for name, key in (("md5", "md5_mb_s"), ("sha256", "sha256_mb_s")):
        r = rates[key]
        rows.append((f"{name} of the int16 shards, one core", f"{seconds * SR * 2 / 1e6 / r / 3600:,.0f} core-hours",
                     f"{r:,.0f} MB/s measured"))  # fmt: skip
    if worker_rate:
        rows.append(("loader workers per GPU", f"{gpu_rate / worker_rate:.1f}",
                     f"{gpu_rate:,.0f} audio-s/s / {worker_rate:,.0f} per worker (benchmarks/loader.py)"))  # fmt: skip
    if "rss_rank_mb" in big and "pss_worker_mb" in big:
        rows.append((f"RAM of a rank at N={max(results):.0e}", f"{big['rss_rank_mb']:,.0f} MB",
                     f"+ {big['pss_worker_mb']:,.0f} MB PSS per loader worker"))  # fmt: skip
    text = "| quantity | value | note |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    print(text)
    return text


def _drop_table(root: Path) -> None:
    shutil.rmtree(root / "table", ignore_errors=True)


if __name__ == "__main__":
    main()
