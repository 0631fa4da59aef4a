"""CQT target throughput: nnAudio's CQT (the reference) vs FastCQT, on the same clips.

Also times the obvious exact alternative, "direct frames x matmul" (per group of 24 bins: frame the padded
signal at hop 320 with the group's kernel support only, one GEMM with the trimmed nnAudio kernels), to show
why FastCQT works in the frequency domain. Errors are vs the CPU reference, relative to each clip's max.

Usage::

    .venv/bin/python benchmarks/cqt.py [--seconds 5] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from mert.teachers.cqt import MERT_CQT, build_cqt, nnaudio_kernels, parity_errors


def music_batch(seconds: float, batch: int, sr: int = 24000, seed: int = 0) -> torch.Tensor:
    """(batch, L) float32 clips: random harmonic notes (C1-C7) with vibrato, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    clips = []
    for _ in range(batch):
        x = 0.02 * rng.standard_normal(len(t))
        for f0 in 32.7 * 2 ** (rng.integers(0, 72, size=6) / 12):
            for h in range(1, 6):
                vibrato = 0.2 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
                x += rng.uniform(0.05, 0.3) / h * np.sin(2 * np.pi * f0 * h * t + vibrato + rng.uniform(0, 6))
        clips.append(x)
    return torch.tensor(np.stack(clips), dtype=torch.float32)


class DirectFramesCQT(torch.nn.Module):
    """nnAudio's convolution restricted to each bin group's kernel support: frames (T, w) @ kernels (w, 2G).

    One clip at a time: the framed signal of the lowest group is ~75 MB per 5 s clip.
    """

    def __init__(self, group_size: int = 24):
        super().__init__()
        kernels, lengths = nnaudio_kernels(MERT_CQT)
        self.width = kernels.shape[1]
        self.groups = []
        for g0 in range(0, len(kernels), group_size):
            k = kernels[g0 : g0 + group_size] * np.sqrt(lengths[g0 : g0 + group_size])[:, None]  # (G, width)
            nz = np.flatnonzero(np.abs(k).max(0))
            lo, hi = int(nz[0]), int(nz[-1]) + 1
            w = torch.from_numpy(np.concatenate([k.real, k.imag])[:, lo:hi].T.astype(np.float32))  # (hi - lo, 2G)
            self.groups.append((lo, w))

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        hop = MERT_CQT.hop_length
        frames = MERT_CQT.n_frames(wav.shape[-1])
        padded = torch.nn.functional.pad(wav, (self.width // 2, self.width // 2))
        out = []
        for lo, w in self.groups:
            span = padded[:, lo : lo + hop * (frames - 1) + len(w)].unfold(-1, len(w), hop)  # (B, T, w)
            re, im = torch.cat([clip @ w for clip in span]).view(len(span), frames, -1).chunk(2, -1)  # (B, T, G)
            out.append((re.square() + im.square()).sqrt().transpose(1, 2))  # (B, G, T)
        return torch.cat(out, 1)


def _time(fn, x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` calls (after one warm-up call) and the last output (on CPU)."""
    out = fn(x)
    best = float("inf")
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out.cpu()


def run(seconds: float = 5.0, batch: int = 8, repeats: int = 3) -> list[dict]:
    """Time the reference and fast CQTs on one batch of music-like clips (CPU, and CUDA when present).

    Args:
        seconds: clip length.
        batch: clips per call.
        repeats: timed calls per row (best is kept; the reference gets at most 2).

    Returns:
        Rows ``{name, x_realtime, ms_per_clip, max_rel_err}``; errors are vs the CPU reference.
    """
    x = music_batch(seconds, batch)
    candidates = [("nnAudio CQT (reference)", "cpu", build_cqt("reference"), min(repeats, 2))]
    candidates += [("direct frames x matmul", "cpu", DirectFramesCQT(), 1)]
    candidates += [("FastCQT", "cpu", build_cqt("fast"), repeats)]
    if torch.cuda.is_available():
        candidates += [("nnAudio CQT (reference)", "cuda", build_cqt("reference", device="cuda"), repeats)]
        candidates += [("FastCQT", "cuda", build_cqt("fast", device="cuda"), repeats)]
    rows, reference = [], None
    for name, device, module, n in candidates:
        wall, out = _time(module, x.to(device), n)
        reference = out if reference is None else reference
        rows.append(
            {
                "name": f"{name} [{device}]",
                "x_realtime": seconds * batch / wall,
                "ms_per_clip": 1000 * wall / batch,
                "max_rel_err": parity_errors(out, reference)["max"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = run(args.seconds, args.batch, args.repeats)
    print(
        f"CQT, {args.batch} x {args.seconds:g} s clips, torch threads={torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'name':34s} {'x realtime':>11s} {'ms/clip':>9s} {'max rel err':>12s}")
    for r in rows:
        print(f"{r['name']:34s} {r['x_realtime']:11.1f} {r['ms_per_clip']:9.1f} {r['max_rel_err']:12.2e}")
    refs = {r["name"].split("[")[-1]: r for r in rows if r["name"].startswith("nnAudio")}
    for r in rows:
        ref = refs[r["name"].split("[")[-1]]
        if r is not ref:
            print(f"{r['name']}: {ref['ms_per_clip'] / r['ms_per_clip']:.1f}x faster than {ref['name']}")


if __name__ == "__main__":
    main()
