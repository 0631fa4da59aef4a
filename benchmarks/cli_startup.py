"""Start-up time of the ``mert`` CLI: ``mert --help`` and ``mert COMMAND --help`` for every command.

What a user waits for before anything happens. Each row is the median wall time of ``--repeats`` fresh processes
(``python -m mert.cli ...`` with this checkout's library first on ``sys.path``), beside two references measured in
the same run: the bare interpreter (``python -c pass``) and ``python -c "import torch"`` (what every command paid
when the parser imported torch). ``--ref REV`` adds the library of another git revision (a temporary
``git worktree``), alternating with this checkout so that load on a shared machine falls on both alike::

    python benchmarks/cli_startup.py [--repeats 5] [--ref 647fdcf]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return dt


def commands(lib: Path) -> list[str]:
    """The CLI's commands, read from its parser (in a subprocess: the library under test is not imported here)."""
    code = (
        "import mert.cli as c; p = c.build_parser(); print(' '.join(sorted(p._subparsers._group_actions[0].choices)))"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env_for(lib), cwd=lib, capture_output=True, text=True)
    return r.stdout.split()


def env_for(lib: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(lib)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref", help="also time the CLI of this git revision")
    args = ap.parse_args()
    libs = {"this checkout": ROOT}
    ref = None
    if args.ref:
        ref = Path(tempfile.mkdtemp(prefix="cli-ref-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref), args.ref], check=True,
                       capture_output=True)  # fmt: skip
        libs[f"ref {args.ref}"] = ref
    try:
        cmds = [[]] + [[c] for c in commands(ROOT)]
        rows: dict[str, dict[str, list[float]]] = {}
        refs = {"python -c pass": [sys.executable, "-c", "pass"],
                "python -c 'import torch'": [sys.executable, "-c", "import torch"]}  # fmt: skip
        for _ in range(args.repeats):
            for name, cmd in refs.items():
                rows.setdefault(name, {}).setdefault("", []).append(timed(cmd, dict(os.environ), ROOT))
            for c in cmds:
                for lib_name, lib in libs.items():
                    cmd = [sys.executable, "-m", "mert.cli", *c, "--help"]
                    key = "mert " + " ".join([*c, "--help"])
                    rows.setdefault(key, {}).setdefault(lib_name, []).append(timed(cmd, env_for(lib), lib))
    finally:
        if ref:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)], capture_output=True)
    cols = list(libs)
    print(f"median of {args.repeats} fresh processes, seconds; load {os.getloadavg()[0]:.2f}")
    print("| command | " + " | ".join(cols) + (" | ratio |" if ref else " |"))
    print("|---|" + "---|" * (len(cols) + (1 if ref else 0)))
    for key, by_lib in rows.items():
        if "" in by_lib:
            print(f"| {key} (reference) | {statistics.median(by_lib['']):.2f} |" + " |" * (len(cols) - 1 + bool(ref)))
            continue
        meds = [statistics.median(by_lib[c]) for c in cols]
        ratio = f" {meds[0] / meds[1]:.3f}x |" if ref else ""
        print(f"| `{key}` | " + " | ".join(f"{m:.2f}" for m in meds) + " |" + ratio)


if __name__ == "__main__":
    main()
