"""Our MERT encoder vs ``transformers.HubertModel`` (sdpa) with the same weights and input, in one run.

Eval mode, no grad, all hidden states requested from both. Prints throughput (x real time), the throughput
ratio, the peak growth of live malloc'd memory during one forward (glibc ``mallinfo2``, sampled every 1 ms;
it includes the returned hidden states) and the max abs difference over all hidden states. ``--chunking``
instead measures how far chunked long-audio extraction (``mert.model.extract.encode_long``) is from a
whole-clip pass on a 60 s demo-like clip.

    .venv/bin/python benchmarks/encoder.py                 # mert-95m, 4 x 5 s (random init, seed 0)
    .venv/bin/python benchmarks/encoder.py --tiny          # mert-tiny, quick
    .venv/bin/python benchmarks/encoder.py --compile       # also torch.compile(ours) (inductor, freezing)
    .venv/bin/python benchmarks/encoder.py --chunking --tiny  # chunked vs whole-clip features, mert-tiny
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import tempfile
import threading
import time

import numpy as np
import psutil
import torch


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _live_bytes_fn():
    """Bytes currently allocated through malloc (all arenas + mmapped chunks, glibc ``mallinfo2``), else RSS.

    Live bytes, unlike RSS, do not keep memory that the allocator retained after a free, so two models
    measured one after the other in one process are compared fairly.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2

        def live() -> int:
            m = libc.mallinfo2()
            return m.uordblks + m.hblkhd

        return live, "heap"
    except (OSError, AttributeError):
        proc = psutil.Process(os.getpid())
        return (lambda: proc.memory_info().rss), "RSS"


LIVE_BYTES, MEM_KIND = _live_bytes_fn()


def peak_memory_during(fn) -> tuple[float, object]:
    """Run ``fn`` while sampling live memory every 1 ms; return (peak minus before, in MiB) and ``fn``'s result."""
    peak, stop = [0], threading.Event()
    gc.collect()
    base = LIVE_BYTES()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], LIVE_BYTES())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
        peak[0] = max(peak[0], LIVE_BYTES())
    finally:
        stop.set()
        t.join()
    return (peak[0] - base) / 2**20, out


def build(preset: str, attn: str):
    """Our random-init model and the HubertModel loaded from our ``save_pretrained`` output."""
    import transformers

    from mert import MERT, MERTConfig

    torch.manual_seed(0)
    ours = MERT(MERTConfig.from_name(preset)).eval()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        hf = transformers.HubertModel.from_pretrained(d, attn_implementation=attn).eval()
    return ours, hf


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def bench(args) -> None:

    preset = "mert-tiny" if args.tiny else args.preset
    ours, hf = build(preset, args.attn)
    wav = 0.1 * torch.randn(
        args.batch, int(args.seconds * ours.config.sample_rate), generator=torch.Generator().manual_seed(1)
    )

    def ours_with(budget, model=ours):
        def run():
            ours.feature_extractor.stream_budget_mib = budget
            return model(wav, output_hidden_states=True).hidden_states

        return run

    runs = {f"ours (eager, conv stream <= {b:g} MiB)": ours_with(b) for b in args.stream_budget_mib}
    runs[f"transformers HubertModel ({args.attn})"] = lambda: hf(wav, output_hidden_states=True).hidden_states
    compile_s = None
    with torch.inference_mode():
        ref = runs[f"transformers HubertModel ({args.attn})"]()
        if args.compile:
            ours.feature_extractor.stream_budget_mib = args.stream_budget_mib[0]
            compiled, compile_s = compile_model(ours, wav)
            runs["ours (torch.compile)"] = ours_with(args.stream_budget_mib[0], compiled)
        diffs = {k: max_diff(f(), ref) for k, f in runs.items()}  # also the warm-up pass
        times = {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved, so that load changes hit every model alike
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        mem = {k: peak_memory_during(f)[0] for k, f in runs.items()}
    report(args, preset, wav, runs, times, mem, diffs, compile_s)


def compile_model(model, wav):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # weights become constants: prepacked mkldnn GEMMs, fused epilogues
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    compiled(wav, output_hidden_states=True)
    return compiled, time.perf_counter() - t0


def report(args, preset, wav, runs, times, mem, diffs, compile_s) -> None:
    from rich.console import Console
    from rich.table import Table

    audio_s = wav.numel() / 24000
    hf_key = next(k for k in runs if k.startswith("transformers"))
    t_hf = float(np.median(times[hf_key]))
    table = Table(title=f"{preset} forward, {wav.shape[0]} x {args.seconds:g} s, all hidden states, eval, no grad")
    for col in (
        "model",
        "median s",
        "min s",
        "x real time",
        "speed vs HF",
        f"peak {MEM_KIND} +MiB",
        "mem vs HF",
        "max |diff|",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for k in runs:
        med = float(np.median(times[k]))
        table.add_row(
            k, f"{med:.3f}", f"{min(times[k]):.3f}", f"{audio_s / med:.1f}", f"{t_hf / med:.2f}x",
            f"{mem[k]:.0f}", f"{mem[k] / max(mem[hf_key], 1e-9):.2f}", f"{diffs[k]:.2e}",
        )  # fmt: skip
    console = Console(width=160)
    console.print(table)
    extra = f", compile {compile_s:.0f} s" if compile_s is not None else ""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load avg {load}{extra}")


def chunking(args) -> None:
    """Chunked (stitched windows) vs whole-clip hidden states on a 60 s demo-like clip."""
    from mert import MERT, MERTConfig
    from mert.data.synth import music
    from mert.model.extract import encode_long

    rng = np.random.default_rng(0)
    clip = music(args.clip_seconds, 24000, "D minor", 100.0, ["strings", "pluck"], rng, with_drums=True)
    wav = torch.from_numpy((0.8 * clip / np.abs(clip).max()).astype(np.float32))
    torch.manual_seed(0)
    preset = "mert-tiny" if args.tiny else args.preset
    model = MERT(MERTConfig.from_name(preset)).eval()
    with torch.inference_mode():
        whole = torch.stack(model(wav[None], output_hidden_states=True).hidden_states)[:, 0]  # (n_layers, T, D)
        chunked = encode_long(model, wav, chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds)
    cos = torch.nn.functional.cosine_similarity(chunked, whole, dim=-1)  # (n_layers, T)
    rel = (chunked - whole).norm(dim=(1, 2)) / whole.norm(dim=(1, 2))
    mean_cos = torch.nn.functional.cosine_similarity(chunked.mean(1), whole.mean(1), dim=-1)
    mean_rel = (chunked.mean(1) - whole.mean(1)).norm(dim=-1) / whole.mean(1).norm(dim=-1)
    print(
        f"{preset} (random init, seed 0), {args.clip_seconds:g} s demo-like clip, "
        f"windows {args.chunk_seconds:g} s / overlap {args.overlap_seconds:g} s"
    )
    print("layer  frame cos mean  frame cos min  rel. L2 err  mean-pooled cos  mean-pooled rel err")
    for i in range(len(cos)):
        print(f"{i:5d}  {cos[i].mean():13.5f}  {cos[i].min():13.5f}  {rel[i]:11.4f}  {mean_cos[i]:15.6f}  "
              f"{mean_rel[i]:19.4f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="mert-tiny instead of --preset")
    p.add_argument("--preset", default="mert-95m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention implementation")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(ours) (compile time excluded)")
    p.add_argument(
        "--stream-budget-mib",
        type=float,
        nargs="+",
        default=[64.0],
        help="one row of ours per FeatureExtractor.stream_budget_mib (memory/speed trade-off of the conv stack)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--chunking", action="store_true", help="measure chunked vs whole-clip features instead")
    p.add_argument("--clip-seconds", type=float, default=60.0)
    p.add_argument("--chunk-seconds", type=float, default=30.0)
    p.add_argument("--overlap-seconds", type=float, default=5.0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chunking(args) if args.chunking else bench(args)


if __name__ == "__main__":
    main()
