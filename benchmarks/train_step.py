"""Pretraining step throughput: fwd + bwd + optimizer step of ``MERTPretrainingModel`` (mert-tiny, mert-95m).

The step is the real one: in-batch noise mixture, span masking, 8 cosine heads + CQT head + feature penalty,
Adam(0.9, 0.98, eps 1e-6, wd 0.01) as in the reference. Labels and the CQT target are random tensors of the
right shapes (the CQT teacher's own cost is benchmarked elsewhere).

    python benchmarks/train_step.py [--presets mert-tiny mert-95m] [--batch 2] [--seconds 5] [--steps 3]

Prints samples/s, audio-seconds/s and achieved FLOP/s; on CUDA also bf16-autocast rows and MFU. FLOPs per
step are counted analytically (fwd + bwd = 3 x fwd, 2 FLOPs per multiply-add):

    conv   = 6 * B * sum_l C_in,l * C_out,l * k_l * T_l          (conv feature extractor, T_l frames of layer l)
    dense  = 6 * P_tok * B * T                                 (P_tok: encoder params minus the conv extractor)
    attn   = 12 * n_layers * B * T^2 * D                       (QK^T and AV)
    heads  = 6 * (P_heads + K * C * F) * N                     (N masked frames; K*C*F: cosine logits)
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from mert.model.pretraining import MERTPretrainingModel

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
"""Dense bf16 peak per GPU (NVIDIA datasheets, no sparsity), matched against the device name."""


def conv_flops(model: MERTPretrainingModel, batch: int, samples: int) -> float:
    cfg = model.mert.config
    total, n, c_in = 0.0, samples, 1
    for c_out, k, s in zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride):
        n = (n - k) // s + 1
        total += c_in * c_out * k * n
        c_in = c_out
    return 6.0 * batch * total


def step_flops(model: MERTPretrainingModel, batch: int, samples: int, mask_frac: float) -> dict[str, float]:
    """Analytic FLOPs of one training step, by term (see the module docstring)."""
    cfg, pc = model.mert.config, model.config
    frames = cfg.num_frames(samples)
    p_conv = sum(p.numel() for p in model.mert.feature_extractor.parameters())
    p_tok = sum(p.numel() for p in model.mert.parameters()) - p_conv
    p_heads = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mert.") and "label_embs" not in n)
    n_masked = mask_frac * batch * frames
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
    args = ap.parse_args()
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
