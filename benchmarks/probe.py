"""Probing time per (task, model) with the params.yaml protocol, and what the demo's beat setting changes.

For each model and each task of a demo corpus, the work ``mert probe`` does: feature extraction (no cache), the
layer x LR sweep with early stopping, the evidence (bootstrap CI over test clips, majority rate). The protocol is
params.yaml's ``probe`` section (LR grid, epochs, patience, ``beat_negative_fraction``).

Reference, measured in the same run: the frame-level (beat) sweep again with ``beat_negative_fraction`` 1.0 (every
frame, the MARBLE protocol) on the same cached features, its time, and the paired bootstrap of the two results
(``mert.probe.evidence.compare``): does the faster setting change the score beyond its uncertainty?

    python benchmarks/probe.py --demo /tmp/demo [--params params.yaml] [--models mfcc chroma random:mert-tiny]
        [--tasks key pitch] [--no-reference] [--profile]

``--profile`` prints the 15 most expensive functions (cProfile, internal time) of the slowest sweep.
The demo corpus is generated in a temporary directory when ``--demo`` is not given (params.yaml's demo section).
Record ``uptime`` next to the numbers: the machine is shared.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import tempfile
import time
from pathlib import Path

import torch

from mert.params import load_section
from mert.probe.api import probe
from mert.probe.evidence import compare


def run(spec: str, task_dir: Path, params, out: Path, profile: bool) -> tuple[dict, str]:
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    report = probe(spec, task_dir, out, params)
    if prof:
        prof.disable()
    report["timing"]["wall_s"] = time.perf_counter() - t0
    text = ""
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        text = buf.getvalue()
    return report, text


def row(report: dict, spec: str) -> dict:
    t = report["timing"]
    ci = f"[{report['ci_low']:.3f}, {report['ci_high']:.3f}]" if report["ci_low"] is not None else "[n/a]"
    return {
        "model": spec,
        "task": report["task"],
        "clips": sum(report["n_clips"].values()),
        "extract_s": t["extract_s"],
        "sweep_s": t.get("sweep_s", 0.0),
        "evidence_s": t.get("evidence_s", 0.0),
        "total_s": t["wall_s"],
        "score [95% CI]": f"{report['metric']} {report['test_score']:.3f} {ci}",
        "n_test": report["n_test"],
        "majority": f"{report['majority_rate']:.3f}",
    }


def show(rows: list[dict]) -> None:
    header = list(rows[0])
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, help="demo corpus directory (default: generate one)")
    p.add_argument("--params", default="params.yaml", help="params file (probe and demo sections)")
    p.add_argument("--models", nargs="+", default=["mfcc", "chroma", "random:mert-tiny"])
    p.add_argument("--tasks", nargs="+", help="task names under <demo>/tasks (default: all)")
    p.add_argument("--no-reference", action="store_true", help="skip the beat_negative_fraction 1.0 reference")
    p.add_argument("--profile", action="store_true", help="cProfile the slowest probe")
    args = p.parse_args()
    torch.set_num_threads(1)
    params = load_section("probe", args.params)
    with tempfile.TemporaryDirectory() as tmp:
        demo = args.demo
        if demo is None:
            from mert.stages import demo_corpus

            demo = Path(demo_corpus(Path(tmp) / "demo", load_section("demo", args.params)))
        tasks = args.tasks or sorted(d.name for d in (demo / "tasks").iterdir() if d.is_dir())
        params = dataclasses.replace(params, cache_dir=str(Path(tmp) / "cache"))
        print(f"load average {os.getloadavg()}, probe threads {params.threads}, LRs {params.lrs}, "
              f"max_epochs {params.max_epochs}, patience {params.patience}, "
              f"beat_negative_fraction {params.beat_negative_fraction}")  # fmt: skip
        rows, beats, slowest = [], [], (0.0, "")
        for spec in args.models:
            for name in tasks:
                out = Path(tmp) / "out" / spec.replace(":", "_") / f"{name}.json"
                report, prof = run(spec, demo / "tasks" / name, params, out, args.profile)
                rows.append(row(report, spec))
                if report["task_kind"] == "beats":
                    beats.append((spec, demo / "tasks" / name, out, report))
                slowest = max(slowest, (report["timing"].get("sweep_s", 0.0), prof))
        show(rows)
        print("\nper model (all tasks): " + ", ".join(
            f"{m}: {sum(r['total_s'] for r in rows if r['model'] == m):.1f} s total, "
            f"{sum(r['sweep_s'] for r in rows if r['model'] == m):.1f} s sweep" for m in args.models))  # fmt: skip
        if beats and not args.no_reference and params.beat_negative_fraction < 1:
            print("\nreference: beat sweep with every frame (beat_negative_fraction 1.0, the MARBLE protocol)")
            ref_params = dataclasses.replace(params, beat_negative_fraction=1.0)
            ref_rows = []
            for spec, task_dir, out, report in beats:
                ref_out = out.with_name(out.stem + "-all-frames.json")
                ref, _ = run(spec, task_dir, ref_params, ref_out, False)
                ref_rows.append(row(ref, f"{spec} (all frames)"))
                c = compare(out, ref_out)
                ref_rows[-1]["paired diff vs demo setting"] = c.text(
                    f"fraction {params.beat_negative_fraction}", "all frames")  # fmt: skip
                speed = ref["timing"].get("sweep_s", 0.0) / max(report["timing"].get("sweep_s", 0.0), 1e-9)
                ref_rows[-1]["sweep speed-up"] = f"{speed:.1f}x"
            show(ref_rows)
        if args.profile and slowest[1]:
            print(f"\nprofile of the slowest probe (sweep {slowest[0]:.1f} s):\n{slowest[1]}")


if __name__ == "__main__":
    main()
