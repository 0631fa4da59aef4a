"""Pretraining step throughput: fwd + bwd + optimizer step of ``MERTPretrainingModel`` (mert-tiny, mert-95m).

The step is the real one: in-batch noise mixture, span masking, 8 cosine heads + CQT head + feature penalty,
Adam(0.9, 0.98, eps 1e-6, wd 0.01) as in the reference. Labels and the CQT target are random tensors of the
right shapes (the CQT teacher's own cost is benchmarked elsewhere).

    python benchmarks/train_step.py [--presets mert-tiny mert-95m] [--batch 2] [--seconds 5] [--steps 3]

Prints samples/s, audio-seconds/s and achieved FLOP/s; on CUDA also bf16-autocast rows and MFU.

``--profile NAME`` instead times the trainer's own step (``Trainer.train_step`` of a ``params.yaml`` profile, e.g. the
main job's ``mert-small-lowcqt``: its micro-batches, CQT target, objective, optimiser and clipping, fed by its loader
from a synthetic corpus with random labels), beside the machine's FLOP bound: float32 matmul GFLOP/s measured in the
same run (1 thread and every thread) divided by the step's analytic FLOPs per audio-second. ``--ref REV`` runs the
same measurement on the library of another commit (a temporary ``git worktree``; the runs alternate, ``--rounds``
each, so load on a shared machine hits both alike) and prints both, with CPU seconds per step (all threads of the
process: robust to other load) next to the wall time::

    python benchmarks/train_step.py --profile mert-small-lowcqt --ref 647fdcf [--steps 20] [--rounds 3]
        [--variant conv_frozen_layers=2]

``--variant KEY=VALUE[,...]`` adds a row: this checkout with those ``model_overrides`` on the profile (JSON values).

FLOPs per step are counted analytically (fwd + bwd = 3 x fwd, 2 FLOPs per multiply-add):

    conv   = 6 * B * sum_l C_in,l * C_out,l * k_l * T_l          (conv feature extractor, T_l frames of layer l;
                                                               2 instead of 6 for a frozen layer: no backward)
    dense  = 6 * P_tok * B * T                                 (P_tok: encoder params minus the conv extractor)
    attn   = 12 * n_layers * B * T^2 * D                       (QK^T and AV)
    heads  = 6 * (P_heads + K * C * F) * N                     (N masked frames, every frame with pred_nomask_weight;
                                                               K*C*F: cosine logits)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mert.model.pretraining import MERTPretrainingModel

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
"""Dense bf16 peak per GPU (NVIDIA datasheets, no sparsity), matched against the device name."""


def conv_flops(model: MERTPretrainingModel, batch: int, samples: int) -> float:
    """Conv front end, fwd + bwd; a frozen layer (``conv_frozen_layers``) has no backward: 2 FLOPs per MAC."""
    cfg = model.mert.config
    total, n, c_in = 0.0, samples, 1
    frozen = getattr(cfg, "conv_frozen_layers", 0)
    for i, (c_out, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
        n = (n - k) // s + 1
        total += (2.0 if i < frozen else 6.0) * c_in * c_out * k * n
        c_in = c_out
    return batch * total


def step_flops(model: MERTPretrainingModel, batch: int, samples: int, mask_frac: float) -> dict[str, float]:
    """Analytic FLOPs of one training step, by term (see the module docstring)."""
    cfg, pc = model.mert.config, model.config
    frames = cfg.num_frames(samples)
    p_conv = sum(p.numel() for p in model.mert.feature_extractor.parameters())
    p_tok = sum(p.numel() for p in model.mert.parameters()) - p_conv
    p_heads = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mert.") and "label_embs" not in n)
    n_masked = mask_frac * batch * frames
    if getattr(pc, "pred_nomask_weight", 0) > 0:  # the heads predict the unmasked frames too
        n_masked = batch * frames
    cosine = pc.n_codebooks * pc.codebook_size * pc.final_dim if pc.head == "nce" else 0
    return {
        "conv": conv_flops(model, batch, samples),
        "dense": 6.0 * p_tok * batch * frames,
        "attn": 12.0 * cfg.num_hidden_layers * batch * frames**2 * cfg.hidden_size,
        "heads": 6.0 * (p_heads + cosine) * n_masked,
    }


def make_batch(model: MERTPretrainingModel, batch: int, samples: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = -(-samples // 320)  # EnCodec frames (375 for 5 s); the model trims them to the 374 encoder frames
    wav = (torch.randn(batch, samples, generator=g) * 0.1).to(device)
    labels = torch.randint(0, model.config.codebook_size, (batch, model.config.n_codebooks, frames), generator=g)
    cqt = torch.rand(batch, model.config.cqt_bins, samples // 320 + 1, generator=g)  # random CQT target
    return wav, labels.to(device), cqt.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(name: str, args, device: torch.device, bf16: bool) -> dict[str, float | str]:
    torch.manual_seed(0)
    model = MERTPretrainingModel.from_name(name).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    samples = int(args.seconds * 24000)
    wav, labels, cqt = make_batch(model, args.batch, samples, device)
    gen = torch.Generator(device=device).manual_seed(0)
    mask_fracs, times = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(wav, labels, cqt, generator=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            mask_fracs.append(float(out.metrics["mask_frac"]))
    sec = sum(times) / len(times)
    flops = sum(step_flops(model, args.batch, samples, sum(mask_fracs) / len(mask_fracs)).values())
    row: dict[str, float | str] = {
        "model": name,
        "device": device.type,
        "dtype": "bf16-autocast" if bf16 else "fp32",
        "batch": f"{args.batch}x{args.seconds:g}s",
        "s/step": sec,
        "samples/s": args.batch / sec,
        "audio-s/s": args.batch * args.seconds / sec,
        "GFLOP/step": flops / 1e9,
        "TFLOP/s": flops / sec / 1e12,
        "MFU": "n/a",
    }
    if device.type == "cuda":
        row["peak GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name(device)), None)
        if bf16 and peak:
            row["MFU"] = f"{100 * flops / sec / (peak * 1e12):.1f}%"
    return row


# ---------------------------------------------------------------------------------------------- --profile mode
def sgemm_gflops(threads: int, seconds: float = 1.0, n: int = 1024) -> float:
    """Dense float32 matmul throughput of this machine with ``threads`` intra-op threads (GFLOP/s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        return 2.0 * n**3 * reps / (time.perf_counter() - t0) / 1e9
    finally:
        torch.set_num_threads(before)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def profile_child(args) -> dict:
    """One measurement of ``Trainer.train_step`` of ``args.profile`` with the library on ``sys.path`` (JSON row)."""
    from loader import write_corpus, write_labels

    from mert.train.distributed import DistInfo
    from mert.train.params import PROFILES
    from mert.train.trainer import Trainer

    prof = dataclasses.replace(PROFILES[args.profile], max_steps=10**6, val_interval=0, save_interval=10**6)
    if args.override:
        prof = dataclasses.replace(prof, model_overrides={**prof.model_overrides, **json.loads(args.override)})
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "corpus", 24, 20.0, per_shard=8)
        labels = write_labels(Path(tmp) / "labels", corpus)
        t = Trainer(prof, corpus, labels, Path(tmp) / "run", DistInfo(device=torch.device("cpu"))).setup()
        it = iter(t.loader)
        try:
            for _ in range(args.warmup):
                t.train_step(next(it))
            wall = cpu = flops = audio = 0.0
            for _ in range(args.steps):
                w0, c0 = time.perf_counter(), cpu_seconds()
                batches = next(it)
                m = t.train_step(batches)
                float(m["loss/total"])
                wall, cpu = wall + time.perf_counter() - w0, cpu + cpu_seconds() - c0
                for b in batches:
                    B, L = b.wav.shape
                    audio += B * L / 24_000
                    flops += sum(step_flops(t.raw_model, B, L, float(m["mask_frac"])).values())
        finally:
            it.close()
    return {"s_per_step": wall / args.steps, "cpu_s_per_step": cpu / args.steps, "audio_s_per_s": audio / wall,
            "gflop_per_audio_s": flops / audio / 1e9, "threads": torch.get_num_threads()}  # fmt: skip


def parse_overrides(spec: str) -> dict:
    """``"conv_frozen_layers=2,hidden_size=64"`` -> ``{"conv_frozen_layers": 2, "hidden_size": 64}`` (JSON values)."""
    out = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--variant {spec!r}: expected KEY=VALUE[,KEY=VALUE...]")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def worktree(rev: str, root: Path) -> Path:
    """A detached checkout of ``rev`` beside nothing else (removed by :func:`drop_worktree`)."""
    path = Path(tempfile.mkdtemp(prefix="train-step-ref-"))
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)  # fmt: skip
    return path


def drop_worktree(path: Path, root: Path) -> None:
    subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)], capture_output=True)


def profile_main(args) -> None:
    root = Path(__file__).resolve().parents[1]
    libs: dict[str, tuple[Path, dict]] = {"this checkout": (root, {})}
    for spec in args.variant or []:
        libs[f"this checkout, {spec}"] = (root, parse_overrides(spec))
    ref = None
    if args.ref:
        ref = worktree(args.ref, root)
        libs[f"ref {args.ref}"] = (ref, {})
    try:
        peak_1, peak_n = sgemm_gflops(1), sgemm_gflops(os.cpu_count() or 1)
        runs: dict[str, list[dict]] = {k: [] for k in libs}
        for _ in range(args.rounds):  # alternate: load on a shared machine falls on both alike
            for name, (lib, overrides) in libs.items():
                env = {**os.environ, "PYTHONPATH": f"{lib}{os.pathsep}{Path(__file__).parent}"}
                cmd = [sys.executable, __file__, "--profile", args.profile, "--child", "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--override", json.dumps(overrides)]  # fmt: skip
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=lib)
                if r.returncode:
                    raise SystemExit(f"{name}: the measurement failed:\n{r.stderr[-3000:]}")
                runs[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
    finally:
        if ref:
            drop_worktree(ref, root)
    peak = max(peak_1, peak_n)
    print(f"torch {torch.__version__}; {os.cpu_count()} cores; float32 matmul {peak_1:.1f} GFLOP/s on 1 thread, "
          f"{peak_n:.1f} on {os.cpu_count()}; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"profile {args.profile}: {args.rounds} runs of {args.steps} steps after {args.warmup} (median of runs)")
    print("| library | s/step (wall) | CPU s/step | audio-s/s | GFLOP per audio-s | FLOP bound audio-s/s | "
          "share of bound |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    base = None
    for name, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "threads"}
        bound = peak / med["gflop_per_audio_s"]
        base = base or med
        print(f"| {name} | {med['s_per_step']:.3f} | {med['cpu_s_per_step']:.3f} | {med['audio_s_per_s']:.1f} | "
              f"{med['gflop_per_audio_s']:.2f} | {bound:.0f} | {med['audio_s_per_s'] / bound:.0%} |")  # fmt: skip
    first = "this checkout"
    for name in list(libs)[1:]:
        new, other = (statistics.median(r["s_per_step"] for r in runs[k]) for k in (first, name))
        newc, otherc = (statistics.median(r["cpu_s_per_step"] for r in runs[k]) for k in (first, name))
        print(f"{first} / {name}: wall {new / other:.2f}x, CPU {newc / otherc:.2f}x per step")
    print("FLOP bound: the machine's best float32 matmul rate / the step's analytic FLOPs per audio-second.")


def fmt(v: float | str) -> str:
    if isinstance(v, str):
        return v
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["mert-tiny", "mert-95m"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", help="time Trainer.train_step of this params.yaml profile (CPU) instead of presets")
    ap.add_argument("--ref", help="with --profile: also time the library of this git revision, alternating")
    ap.add_argument("--rounds", type=int, default=3, help="with --profile: runs per library")
    ap.add_argument(
        "--variant",
        action="append",
        metavar="KEY=VALUE[,...]",
        help="with --profile: also time this checkout with these model_overrides (repeatable)",
    )
    ap.add_argument("--override", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile:
        if args.child:
            print(json.dumps(profile_child(args)))
        else:
            profile_main(args)
        return
    device = torch.device(args.device)
    rows = []
    for name in args.presets:
        for bf16 in (False, True) if device.type == "cuda" else (False,):
            rows.append(run(name, args, device, bf16))
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
    print(
        f"Random labels and random CQT target; mixture + masking on; {args.steps} timed steps after {args.warmup} "
        "warmup. FLOPs analytic: 6*B*sum(conv MACs) + 6*P_tok*B*T + 12*layers*B*T^2*D + 6*(P_heads+K*C*F)*N_masked."
    )


if __name__ == "__main__":
    main()
