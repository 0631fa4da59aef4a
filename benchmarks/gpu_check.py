"""One-command GPU check: what the first minutes on an H100/H200 should measure, printed as tables and saved as JSON.

    .venv/bin/python benchmarks/gpu_check.py [--out gpu_check.json] [--budget 400] [--only train,cqt,encodec]

About 6-7 minutes on one H100/H200 (``--budget`` seconds of rows, then a hard stop 60 s later).

Sections, in this order (each row is written to the JSON as soon as it is measured, so a cut-short run keeps what
it got; a row that would not fit in ``--budget`` is skipped and listed):

* ``cqt``: FastCQT vs nnAudio's CQT on the GPU (15 x 5 s clips): x real time, max error relative to the clip peak.
* ``encodec``: EnCodec labelling on the GPU, x real time: ``label_corpus`` end to end (read, window, batch, encode,
  write) per batch size, and the bare batched encode (the bound), with the random-projection teacher (no internet
  on the GPU host) and the official path's compute (encoder + RVQ, random weights: the same cost as ``pretrained``).
* ``train``: the real pretraining step (``Trainer.train_step``: FastCQT target on the GPU, in-batch mixture, span
  mask, bf16 autocast, Adam, grad clip) of ``mert-95m`` (5 s crops, 15 clips per micro-batch) and ``mert-330m``
  (5.12 s, 7 clips), eager and with ``compile: true``, fed by the real loader (``loader_workers`` processes over a
  memory-mapped synthetic corpus and an on-disk label store). Columns: samples/s, audio-s/s, tokens/s (encoder
  frames), TFLOP/s and MFU against the GPU's dense bf16 peak (analytic FLOPs of ``benchmarks/train_step.py``), peak
  memory, the data-wait share of the step time (loader-bound or not), and for the eager rows the largest micro-batch
  that fits (doubling, then bisection; a lower bound at the last fitting size). One more 95M row feeds it from the
  in-process thread (``loader_workers: 0``) for comparison.

Targets (issue 13): MFU >= 40% for the 95M profile at 5 s crops; data wait < 5% of step time.

Without a CUDA device it stops at once with exit status 2 and says so. ``--smoke`` runs every section on the CPU
with ``mert-tiny`` and tiny inputs instead (numbers meaningless; it checks the script end to end).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # sibling benchmarks: loader (corpus, labels), train_step (FLOPs), cqt, teachers

PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "GH200": 989.0,
    "H200": 989.0,
    "H100": 989.0,  # SXM
    "H800": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}
"""Dense bf16 tensor-core peak per GPU (NVIDIA datasheets, no sparsity); the longest name contained in the
device name wins (``--peak-tflops`` overrides)."""


class Check:
    """Collects rows per section, prints them, and rewrites the JSON after each one."""

    def __init__(self, out: Path, budget: float):
        self.out, self.budget, self.t0 = out, budget, time.monotonic()
        self.data: dict = {"sections": {}, "skipped": [], "errors": []}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.out)

    def add(self, section: str, row: dict) -> None:
        self.data["sections"].setdefault(section, []).append(row)
        self.save()
        print(f"[{self.elapsed():5.0f} s] {section}: " + ", ".join(f"{k}={fmt(v)}" for k, v in row.items()), flush=True)

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        self.save()
        print(f"[{self.elapsed():5.0f} s] SKIPPED {what}: {why}", flush=True)

    def error(self, what: str, e: BaseException) -> None:
        self.data["errors"].append({"what": what, "error": f"{type(e).__name__}: {e}"})
        self.save()
        print(f"[{self.elapsed():5.0f} s] FAILED {what}: {type(e).__name__}: {e}", flush=True)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def device_info(dev: torch.device, peak_override: float | None) -> dict:
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": len(os.sched_getaffinity(0)),
        "dev_shm_gib": round(shutil.disk_usage("/dev/shm").total / 2**30, 1) if Path("/dev/shm").exists() else None,
    }
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        name = torch.cuda.get_device_name(dev)
        match = max((k for k in PEAK_BF16_TFLOPS if k in name), key=len, default=None)
        info.update(
            name=name,
            capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / 2**30, 1),
            sms=p.multi_processor_count,
            peak_bf16_tflops=peak_override or (PEAK_BF16_TFLOPS[match] if match else None),
        )
    else:
        info.update(name="cpu (smoke)", peak_bf16_tflops=peak_override)
    return info


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def free_memory(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- train
def make_trainer(name: str, corpus, labels, dev, args, out: Path, compile_: bool, workers: int):
    from mert.train.distributed import DistInfo
    from mert.train.params import PROFILES
    from mert.train.trainer import Trainer

    base = PROFILES[name]
    micro, crop = base.micro_batch_clips, base.crop_samples
    if args.smoke:
        micro, crop = 2, 9600
    prof = dataclasses.replace(
        base,
        crop_samples=crop,
        min_clip_samples=min(base.min_clip_samples, crop),
        micro_batch_clips=micro,
        batch_seconds=micro * crop / 24_000,  # one micro-batch per step
        precision="bf16",
        compile=compile_,
        loader_workers=workers,
        loader_prefetch=2,
        max_steps=10**6,
        warmup_steps=10,
        val_batches=1,
    )
    return Trainer(prof, corpus, labels, out, DistInfo(device=dev)).setup()


def timed_steps(t, dev, warmup: int, steps: int) -> dict:
    """Iterate the trainer's own loader: ``warmup`` steps (compilation, allocator, workers' start), then ``steps``
    timed ones; the data wait is the time ``next(loader)`` blocks."""
    from train_step import step_flops

    it = iter(t.loader)
    try:
        t0 = time.perf_counter()
        for _ in range(warmup):
            m = t.train_step(next(it))
            float(m["loss/total"])
        sync(dev)
        warm_s = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        wait = total = 0.0
        clips = samples = flops = 0.0
        frames = 0
        for _ in range(steps):
            a = time.perf_counter()
            batches = next(it)
            b = time.perf_counter()
            m = t.train_step(batches)
            loss = float(m["loss/total"])  # a sync: the step is done
            c = time.perf_counter()
            wait, total = wait + (b - a), total + (c - a)
            for batch in batches:
                B, L = batch.wav.shape
                clips += B
                samples += B * L
                frames += B * t.encoder_config.num_frames(L)
                flops += sum(step_flops(t.raw_model, B, L, float(m["mask_frac"])).values())
    finally:
        it.close()
    row = {
        "s_per_step": total / steps,
        "samples_per_s": clips / total,
        "audio_s_per_s": samples / 24_000 / total,
        "tokens_per_s": frames / total,
        "tflops": flops / total / 1e12,
        "data_wait_share": wait / total,
        "warmup_s": warm_s,
        "loss": loss,
    }
    if dev.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def max_micro_batch(t, dev, start: int, cap: int, deadline: float) -> dict:
    """Largest micro-batch (clips of the profile's crop) whose full step fits: doubling from ``start``, then 3
    bisection steps. Returns ``{"max_micro_batch": fits, "first_oom": b}`` (a lower bound when the time ran out)."""
    from mert.train.data import Batch

    L = t.p.crop_samples
    K, C = t.labels.n_codebooks, t.labels.codebook_size

    def fits(b: int) -> bool:
        free_memory(dev)
        g = torch.Generator().manual_seed(b)
        wav = torch.randn(b, L, generator=g) * 0.1
        labels = torch.randint(0, C, (b, K, (L - 400) // 320 + 1), generator=g)
        try:
            m = t.train_step([Batch(wav, labels, [str(i) for i in range(b)], step=0, slot=0)])
            float(m["loss/total"])
            return True
        except torch.OutOfMemoryError:
            t.optimizer.zero_grad(set_to_none=True)
            return False
        finally:
            free_memory(dev)

    good, bad = 0, None
    b = start
    while b <= cap and time.monotonic() < deadline:
        if fits(b):
            good, b = b, 2 * b
        else:
            bad = b
            break
    if bad is not None:
        for _ in range(3):
            if bad - good <= 1 or time.monotonic() > deadline:
                break
            mid = (good + bad) // 2
            good, bad = (mid, bad) if fits(mid) else (good, mid)
    return {"max_micro_batch": good, "first_oom": bad}


def train_section(check: Check, corpus, labels, dev, args) -> None:
    peak = check.data["device"].get("peak_bf16_tflops")
    names = ["mert-tiny"] if args.smoke else ["mert-95m", "mert-330m"]
    workers_default = max(1, min(4, check.data["device"]["cpus"] - 1))
    # Eager rows first (the thread-fed 95M row after its process-fed twin), then the compiled ones (the longest).
    plan = [(n, False, workers_default) for n in names] + [(n, True, workers_default) for n in names]
    plan.insert(1, (names[0], False, 0))
    for name, compile_, workers in plan:
        if compile_ and args.no_compile:
            check.skip(f"train {name} compile", "--no-compile")
            continue
        need = (120 if compile_ else 40) * (0.05 if args.smoke else 1)
        what = f"train {name} {'compiled' if compile_ else 'eager'} workers={workers}"
        if check.left() < need:
            check.skip(what, f"{check.left():.0f} s of the budget left, ~{need:.0f} s needed")
            continue
        t = None
        try:
            with tempfile.TemporaryDirectory(prefix="gpu-check-run-") as out:
                t = make_trainer(name, corpus, labels, dev, args, Path(out), compile_, workers)
                row = {"model": name, "compile": compile_, "loader_workers": workers}
                row["micro_batch"] = f"{t.p.micro_batch_clips} x {t.p.crop_seconds:g} s"
                row.update(timed_steps(t, dev, args.warmup + (3 if compile_ else 0), args.steps))
                if peak:
                    row["mfu"] = row["tflops"] / peak
                if not compile_ and workers:
                    cap = 8 if args.smoke else 2048
                    deadline = time.monotonic() + min(45.0, max(0.0, check.left() - 60))
                    row.update(max_micro_batch(t, dev, t.p.micro_batch_clips, cap, deadline))
                check.add("train", row)
        except Exception as e:  # noqa: BLE001 - recorded, the other rows still run
            check.error(what, e)
        finally:
            del t
            free_memory(dev)


def print_train(rows: list[dict]) -> None:
    head = ["model", "compile", "workers", "micro-batch", "samples/s", "audio-s/s", "tokens/s", "TFLOP/s", "MFU"]
    head += ["peak GiB", "max micro-batch", "data wait", "warm-up s"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        mx = "" if "max_micro_batch" not in r else f"{r['max_micro_batch']} (OOM at {r.get('first_oom') or '-'})"
        cells = [r["model"], "yes" if r["compile"] else "no", str(r["loader_workers"]), r["micro_batch"]]
        cells += [fmt(r["samples_per_s"]), fmt(r["audio_s_per_s"]), fmt(r["tokens_per_s"]), fmt(r["tflops"]), mfu]
        cells += [
            fmt(r["peak_gib"]) if "peak_gib" in r else "n/a",
            mx,
            f"{100 * r['data_wait_share']:.1f}%",
            fmt(r["warmup_s"]),
        ]
        print("| " + " | ".join(cells) + " |")


# ---------------------------------------------------------------------------------------------- cqt
def cqt_section(check: Check, dev, args) -> None:
    from cqt import _time, music_batch

    from mert.teachers.cqt import build_cqt, parity_errors

    seconds, batch = (1.0, 2) if args.smoke else (5.0, 15)
    x = music_batch(seconds, batch).to(dev)
    ref = None
    for kind, label in (("reference", "nnAudio CQT"), ("fast", "FastCQT")):
        try:
            module = build_cqt(kind, device=dev)
            wall, out = _time(module, x, 2 if args.smoke else 5)
            ref = out if ref is None else ref
            row = {"name": f"{label} [{dev.type}]", "clips": f"{batch} x {seconds:g} s"}
            row.update(x_realtime=seconds * batch / wall, ms_per_clip=1000 * wall / batch)
            row["max_rel_err_vs_nnaudio"] = parity_errors(out, ref)["max"]
            check.add("cqt", row)
            del module
        except Exception as e:  # noqa: BLE001
            check.error(f"cqt {kind}", e)
    rows = check.data["sections"].get("cqt", [])
    if len(rows) == 2:
        check.data["cqt_speedup"] = rows[1]["x_realtime"] / rows[0]["x_realtime"]
        check.save()


# ---------------------------------------------------------------------------------------------- encodec
def encodec_section(check: Check, corpus, dev, args, tmp: Path) -> None:
    from teachers import bare_batched

    from mert.teachers.label_run import label_corpus
    from mert.teachers.rvq import EncodecTeacher, build_rvq_teacher, load_encodec

    audio = corpus.total_seconds
    teacher = build_rvq_teacher("random").to(dev)
    teacher.encode(torch.zeros(2, 24_000, device=dev), torch.tensor([24_000, 24_000], device=dev))  # warm-up
    for b in (4, 16) if args.smoke else (8, 32, 64):
        if check.left() < 20:
            check.skip(f"encodec batch {b}", "budget")
            continue
        try:
            s = label_corpus(corpus.root, tmp / f"labels-{b}", teacher, batch_size=b, device=str(dev),
                             progress=False, usage=False)  # fmt: skip
            check.add("encodec", {"name": "label_corpus, random-projection teacher", "batch": b,
                                  "x_realtime": s.computed_seconds / s.wall_seconds, "wall_s": s.wall_seconds,
                                  "encode_share": s.encode_seconds / s.wall_seconds})  # fmt: skip
            wall, _ = bare_batched(corpus, teacher, b, dev)
            check.add("encodec", {"name": "bare batched encode (bound), random-projection", "batch": b,
                                  "x_realtime": audio / wall, "wall_s": wall})  # fmt: skip
        except Exception as e:  # noqa: BLE001
            check.error(f"encodec batch {b}", e)
    try:  # the pretrained teacher's compute: encoder + residual VQ (random weights: same shapes and cost)
        model, _ = load_encodec("random", 0)
        rvq = EncodecTeacher(model, "checkpoint").to(dev)
        b = 16 if args.smoke else 32
        wall, _ = bare_batched(corpus, rvq, b, dev)
        check.add("encodec", {"name": "bare batched encode (bound), encoder + RVQ (pretrained path)", "batch": b,
                              "x_realtime": audio / wall, "wall_s": wall})  # fmt: skip
    except Exception as e:  # noqa: BLE001
        check.error("encodec rvq path", e)


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--budget", type=float, default=400.0, help="seconds; rows that would not fit are skipped")
    ap.add_argument("--only", default="train,cqt,encodec", help="comma list of sections")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per train row")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per train row (+3 when compiled)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU (default: from its name)")
    ap.add_argument("--clips", type=int, default=64, help="synthetic corpus clips (~20 s each)")
    ap.add_argument("--smoke", action="store_true", help="CPU, mert-tiny, tiny inputs: checks the script only")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        print(
            f"gpu_check: no GPU: {why} (torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). Nothing was measured. Run it on a machine with "
            "an H100/H200; `--smoke` runs every section on the CPU to check the script itself.",
            file=sys.stderr,
        )
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cpu") if args.smoke else torch.device("cuda", 0)
    if args.smoke:
        args.steps, args.warmup, args.clips = min(args.steps, 2), min(args.warmup, 1), min(args.clips, 8)
    check = Check(args.out, args.budget)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("gpu_check: --budget + 60 s")))
    signal.alarm(int(args.budget) + 60)  # a hung row cannot eat the machine's time: what was measured stays
    check.data["device"] = device_info(dev, args.peak_tflops)
    check.data["args"] = vars(args)
    check.save()
    print(f"gpu_check on {check.data['device']}", flush=True)
    sections = set(args.only.split(","))
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            from loader import write_corpus, write_labels

            corpus = write_corpus(Path(tmp) / "corpus", args.clips, 2.0 if args.smoke else 20.0, per_shard=8)
            labels = write_labels(Path(tmp) / "labels", corpus)
            check.data["corpus"] = {"clips": len(corpus), "minutes": round(corpus.total_seconds / 60, 1)}
            if "cqt" in sections:  # the short sections first: a cut-short run still has them
                cqt_section(check, dev, args)
            if "encodec" in sections and check.left() > 20:
                encodec_section(check, corpus, dev, args, Path(tmp))
            if "train" in sections:
                train_section(check, corpus, labels, dev, args)
    except TimeoutError as e:
        check.error("gpu_check", e)
    finally:
        signal.alarm(0)
        check.save()
    secs = check.data["sections"]
    if secs.get("train"):
        print_train(secs["train"])
    for name in ("cqt", "encodec"):
        if secs.get(name):
            print(f"\n{name}:")
            for r in secs[name]:
                print("  " + ", ".join(f"{k}={fmt(v)}" for k, v in r.items()))
    for s in check.data["skipped"]:
        print(f"skipped: {s['what']} ({s['why']})")
    for e in check.data["errors"]:
        print(f"FAILED: {e['what']}: {e['error']}")
    train = [r for r in secs.get("train", []) if r["model"] == "mert-95m" and r.get("mfu") is not None]
    if train:
        best = max(train, key=lambda r: r["mfu"])
        ok = best["mfu"] >= 0.40
        print(f"\ntarget MFU >= 40% (95M, 5 s crops): best {100 * best['mfu']:.1f}% -> {'met' if ok else 'NOT met'}")
        waits = [r["data_wait_share"] for r in secs["train"] if r["loader_workers"]]
        if waits:
            print(f"target data wait < 5%: worst with loader processes {100 * max(waits):.1f}% -> "
                  f"{'met' if max(waits) < 0.05 else 'NOT met'}")  # fmt: skip
    print(f"\n{args.out} written ({check.elapsed():.0f} s)")
    return 1 if check.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
