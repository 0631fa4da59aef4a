r"""Plot the paired difference to a random-init twin of several probed models: one panel per task, one row per model.

    .venv/bin/python scripts/plot_variants.py --out docs/results/variants.png \
        --baseline 'data/probe/mert-small/{task}/random-init_mert-small.json' \
        --row main 'data/probe/mert-small/{task}/models__mert-small_1.json' \
        --row fgm0 'data/variants/fgm0/probe/{task}/results.json' \
        --row wide128 'data/variants/wide128/probe/{task}/results.json' 'data/variants/wide128/probe/{task}/random.json'

Each ``--row NAME RESULTS [BASELINE]`` names a ``mert probe`` results file per task (``{task}`` is replaced), and
optionally its own random-init twin (default ``--baseline``). A task whose results file is missing is left out of
that row. The difference and its 95% CI are :func:`mert.probe.evidence.compare` (paired bootstrap over the common
test clips, as ``mert probe-compare``); a marker is filled when the CI excludes 0. Prints the same numbers as a
Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mert.ablation.report import MARKS
from mert.probe.evidence import compare
from mert.utils.io import atomic_write

TASKS = ("key", "instrument", "pitch", "tempo")


def comparisons(rows: list[list[str]], baseline: str, tasks: tuple[str, ...], n_boot: int = 1000) -> dict:
    """``{row name: {task: Comparison}}`` for every row and task whose results files exist.

    Args:
        rows: ``[name, results template]`` or ``[name, results template, baseline template]``.
        baseline: default baseline template (``{task}`` replaced).
        tasks: task names.
        n_boot: bootstrap resamples.
    """
    out: dict[str, dict] = {}
    for row in rows:
        if len(row) not in (2, 3):
            raise SystemExit(f"plot_variants: --row takes NAME RESULTS [BASELINE], got {row}")
        name, template = row[0], row[1]
        base = row[2] if len(row) == 3 else baseline
        out[name] = {}
        for task in tasks:
            a, b = Path(template.format(task=task)), Path(base.format(task=task))
            if a.exists() and b.exists():
                out[name][task] = compare(a, b, n_boot=n_boot)
    return out


def markdown(table: dict, tasks: tuple[str, ...]) -> str:
    """One row per model: ``diff [low, high] mark`` per task (empty where not probed)."""
    lines = ["| row | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for name, cells in table.items():
        vals = [f"{cells[t].interval()} {MARKS[cells[t].verdict]}" if t in cells else "" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(table: dict, tasks: tuple[str, ...], path: Path, title: str) -> Path:
    """Forest plot: per task, each row's difference with its CI; filled = beats/worse, open = no difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 0.45 * len(names) + 1.6), sharey=True)
    for ax, task in zip(axes, tasks, strict=True):
        for y, name in enumerate(names):
            c = table[name].get(task)
            if c is None:
                continue
            color = {"beats": "tab:green", "worse": "tab:red"}.get(c.verdict, "tab:gray")
            if c.low is not None:
                ax.plot([c.low, c.high], [y, y], color=color, lw=2)
            ax.plot([c.diff], [y], "o", color=color, mfc=color if MARKS[c.verdict] != "=" else "white")
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_title(task)
        ax.set_xlabel("score - random init")
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--row", nargs="+", action="append", required=True, metavar="NAME RESULTS [BASELINE]")
    ap.add_argument("--baseline", required=True, help="random-init twin's results template ({task})")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--out", type=Path, required=True, help="PNG path")
    ap.add_argument("--title", default="Paired difference to the random-init twin (95% CI)")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    tasks = tuple(args.tasks)
    table = comparisons(args.row, args.baseline, tasks, args.n_boot)
    print(markdown(table, tasks))
    print(f"plot: {plot(table, tasks, args.out, args.title)}")


if __name__ == "__main__":
    main()
