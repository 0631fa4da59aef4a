"""The ablation report: every cell's probe scores with their evidence next to the random-init floor and the
handcrafted baselines, and what its pretraining learned, as Markdown, JSON, a plot and MLflow runs.

:func:`collect` reads the stage outputs (``results.json`` of ``mert probe``, ``result.json`` of the pretraining,
the stages' timing files) and compares every row with the random init of the same architecture, clip by clip
(:func:`mert.probe.evidence.compare`: paired bootstrap of the score difference over the common test clips; the
verdict is ``beats`` when the whole 95% CI is above 0, ``worse`` when below). :func:`write_report` renders it;
:func:`log_runs` logs one MLflow run per row (cells and baselines) through :mod:`mert.tracking`.

Pretraining columns (:mod:`mert.train.diagnostics`): at the final validation, on the masked frames, the accuracy
margin over the majority rate per codebook (0 = the student predicts the most frequent code) and the masked
cross-entropy against the unigram floor (the CE of predicting the training code frequencies; below the floor =
something beyond the frequencies was learned).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mert.ablation.params import AblationParams
from mert.ablation.plan import CELL_FILE, STAGE_FILE, Layout, cells, rows

log = logging.getLogger(__name__)

COMMAND = "dvc repro ablation/dvc.yaml"
"""The one command that runs the whole ablation (and, first, the demo corpus + ingest stages when needed)."""
MARKS = {"beats": "▲", "worse": "▼", "no difference detectable": "="}
_CE = re.compile(r"^val/loss/(\w+)_ce_(\d+)$")


# ----------------------------------------------------------------------------------------------- collecting
def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: missing {what} (run its ablation stage first)") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a valid {what} ({e})") from e


def pretrain_summary(run_dir: str | Path) -> dict[str, Any]:
    """What a cell's pretraining learned, from its ``result.json`` (final validation) and ``ablation_cell.json``.

    Returns:
        ``steps``, ``margins`` (per codebook: val masked accuracy - frame-matched majority rate), their ``mean`` /
        ``min`` / ``max``, ``val_ce`` and ``unigram_ce`` (nats, mean per codebook), ``ce_gain`` (floor - CE: > 0
        means below the unigram floor), ``collapsed``, ``cqt_mse``, ``run_id`` (the pretraining MLflow run),
        ``wall_s`` and the cell's ``objective_overrides``.

    Raises:
        FileNotFoundError / ValueError: a missing or unreadable file, or a result without the diagnostics.
    """
    from mert.train.api import RESULT_FILE

    run_dir = Path(run_dir)
    res = _read_json(run_dir / RESULT_FILE, "pretraining result")
    cell = _read_json(run_dir / CELL_FILE, "ablation cell record")
    val = res.get("val") or {}
    K = sum(1 for k in val if k.startswith("val/acc_margin_"))
    ce = sorted((int(m.group(2)), v) for k, v in val.items() if (m := _CE.match(k)))
    if K == 0 or len(ce) != K:
        raise ValueError(f"{run_dir / RESULT_FILE}: no per-codebook validation margins / CE (val/acc_margin_k)")
    margins = [float(val[f"val/acc_margin_{k}"]) for k in range(K)]
    val_ce = sum(v for _, v in ce) / K
    floor = sum(float(val[f"val/unigram_ce_{k}"]) for k in range(K)) / K
    return {
        "steps": res.get("step"), "codebooks": K, "margins": margins, "margin_mean": sum(margins) / K,
        "margin_min": min(margins), "margin_max": max(margins), "val_ce": val_ce, "unigram_ce": floor,
        "ce_gain": floor - val_ce, "collapsed": bool(val.get("val/collapsed", 0.0)),
        "cqt_mse": val.get("val/loss/cqt_mse"), "run_id": res.get("run_id"), "wall_s": cell.get("wall_s"),
        "objective_overrides": cell.get("objective_overrides", {}), "started": cell.get("started"),
        "finished": cell.get("finished"),
    }  # fmt: skip


def _score(report: Mapping[str, Any]) -> dict[str, Any]:
    return {k: report.get(k) for k in ("test_score", "ci_low", "ci_high", "n_test", "majority_rate", "best_layer")}


def _versus(report, floor, n_boot: int, seed: int) -> dict[str, Any] | None:
    from mert.probe.evidence import compare

    if floor is None:
        return None
    c = compare(report, floor, n_boot, seed)
    return {"diff": c.diff, "low": c.low, "high": c.high, "verdict": c.verdict, "n": c.n}


def collect(params: AblationParams) -> dict[str, Any]:
    """Read every row's probe results (and each cell's pretraining) and compare each with the random init.

    Returns:
        ``{"tasks": {task: {metric, n_test, majority_rate, majority_baseline}}, "rows": [...], "timing": {...}}``;
        each row has ``name``, ``kind`` (``cell`` / ``random-init`` / ``handcrafted``), ``teacher`` and ``cqt``
        (cells), ``scores`` per task (``test_score``, ``ci_low``, ``ci_high``, ``n_test``, ``best_layer``,
        ``vs_random``: ``diff``, ``low``, ``high``, ``verdict``) and ``pretrain`` (cells, :func:`pretrain_summary`).

    Raises:
        FileNotFoundError / ValueError: a missing or unreadable stage output (the message names the file).
    """
    from mert.probe.evidence import load

    lay = Layout(params)
    loaded = {(name, t): load(_exists(lay.probe(name, t))) for name, _ in rows(params) for t in params.tasks}
    floor = {t: loaded.get(("random", t)) for t in params.tasks}
    by_cell = {c.name: c for c in cells(params)}
    out_rows = []
    for name, kind in rows(params):
        scores = {}
        for t in params.tasks:
            rep = loaded[(name, t)]
            vs = None if kind == "random-init" else _versus(rep, floor[t], params.n_boot, params.seed)
            scores[t] = {**_score(rep), "vs_random": vs, "results": str(lay.probe(name, t))}
        cell = by_cell.get(name)
        out_rows.append({"name": name, "kind": kind, "teacher": cell.teacher if cell else None,
                         "cqt": cell.cqt if cell else None, "scores": scores,
                         "pretrain": pretrain_summary(lay.run(cell)) if cell else None})  # fmt: skip
    first = {t: loaded[(rows(params)[0][0], t)] for t in params.tasks}
    tasks = {t: {k: first[t].get(k) for k in ("metric", "n_test", "majority_rate", "majority_baseline")}
             for t in params.tasks}  # fmt: skip
    return {"tasks": tasks, "rows": out_rows, "cqt_effect": cqt_effect(params, loaded), "timing": timing(params)}


def cqt_effect(params: AblationParams, loaded: Mapping[tuple[str, str], Any]) -> list[dict[str, Any]]:
    """Per teacher, the ``with`` cell against each other CQT variant, paired over the same test clips.

    Returns:
        ``[{"teacher", "a": "<teacher>-with", "b": "<teacher>-<variant>", "scores": {task: {diff, low, high,
        verdict, n}}}]`` (``diff`` = score(with) - score(variant): > 0 means the CQT target helped); empty without
        a ``with`` variant.
    """
    if "with" not in params.cqt:
        return []
    out = []
    for teacher in params.teachers:
        a = f"{teacher}-with"
        for variant in (v for v in params.cqt if v != "with"):
            b = f"{teacher}-{variant}"
            scores = {t: _versus(loaded[(a, t)], loaded[(b, t)], params.n_boot, params.seed) for t in params.tasks}
            out.append({"teacher": teacher, "a": a, "b": b, "scores": scores})
    return out


def _exists(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing probe results (run its ablation stage first)")
    return path


def timing(params: AblationParams) -> dict[str, Any]:
    """Wall time of the ablation's stages, from the records each stage wrote (None where a record is missing).

    ``stages_s`` sums the stages' own wall times (DVC runs them one after another, so this is the time the
    ablation's stages took, without DVC's bookkeeping and without the main pipeline's demo-corpus and ingest
    stages); ``span_s`` runs from the earliest stage start to the latest stage end.
    """
    lay = Layout(params)
    files = {"label": [lay.labels(t) / STAGE_FILE for t in params.teachers],
             "pretrain": [lay.run(c) / CELL_FILE for c in cells(params)],
             "probe": [lay.probe(n, t).parent / STAGE_FILE for n, _ in rows(params) for t in params.tasks]}  # fmt: skip
    out: dict[str, Any] = {}
    starts, ends = [], []
    for group, paths in files.items():
        recs = [json.loads(p.read_text()) for p in paths if p.exists()]
        complete = len(recs) == len(paths)
        out[f"{group}_s"] = sum(r["wall_s"] for r in recs) if complete else None
        starts += [r["started"] for r in recs]
        ends += [r["finished"] for r in recs]
    parts = [out[f"{g}_s"] for g in files]
    out["stages_s"] = None if None in parts else sum(parts)
    span = None
    if starts and ends:
        span = (datetime.fromisoformat(max(ends)) - datetime.fromisoformat(min(starts))).total_seconds()
    out["span_s"] = span
    return out


def machine() -> dict[str, Any]:
    """Where the report was made: CPU model and cores, memory, OS, Python/torch, thread settings, load average."""
    import torch

    cpu = platform.processor() or platform.machine()
    mem = None
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), cpu)
        kb = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        mem = round(int(kb) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_at_report": [round(x, 2) for x in load] if load else None}  # fmt: skip


def build(params: AblationParams, *, command: str = COMMAND, corpus_dir: str | Path | None = None) -> dict[str, Any]:
    """The whole report dict: :func:`collect` plus the command, parameters, code commit, corpus and machine."""
    import mert
    from mert.params import to_dict
    from mert.tracking import git_commit

    report = collect(params)
    corpus = None
    if corpus_dir is not None and (Path(corpus_dir) / "manifest.csv").exists():
        from mert.data.shards import Corpus

        c = Corpus(corpus_dir, verify=False)
        corpus = {"dir": str(corpus_dir), "clips": len(c), "minutes": round(c.total_seconds / 60, 2)}
    return {
        "title": "Teacher ablation",
        "command": command,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(Path(mert.__file__).resolve().parent),
        "params": to_dict(params),
        "corpus": corpus,
        "machine": machine(),
        **report,
    }


# ----------------------------------------------------------------------------------------------- rendering
def _f(v: Any, digits: int = 3, sign: bool = False) -> str:
    if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _score_cell(s: Mapping[str, Any]) -> str:
    ci = "n/a" if s.get("ci_low") is None else f"{_f(s['ci_low'])}, {_f(s['ci_high'])}"
    vs = s.get("vs_random")
    mark = f" {MARKS[vs['verdict']]}" if vs else ""
    return f"{_f(s.get('test_score'))} [{ci}]{mark}"


def _diff_cell(vs: Mapping[str, Any] | None) -> str:
    if not vs:
        return "-"
    ci = "n/a" if vs.get("low") is None else f"{_f(vs['low'], sign=True)}, {_f(vs['high'], sign=True)}"
    return f"{_f(vs['diff'], sign=True)} [{ci}] {vs['verdict']}"


def _minutes(s: float | None) -> str:
    return "n/a" if s is None else f"{s / 60:.1f} min"


def _table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in body])


def findings(report: Mapping[str, Any]) -> list[str]:
    """Plain statements computed from the numbers: who beats the floor where, the best row per task."""
    tasks, rows_ = list(report["tasks"]), report["rows"]
    out = []
    for t in tasks:
        beat = [r["name"] for r in rows_ if (r["scores"][t]["vs_random"] or {}).get("verdict") == "beats"]
        worse = [r["name"] for r in rows_ if (r["scores"][t]["vs_random"] or {}).get("verdict") == "worse"]
        scored = [r for r in rows_ if isinstance(r["scores"][t].get("test_score"), (int, float))]
        best = max(scored, key=lambda r: r["scores"][t]["test_score"], default=None)
        best_cell = max((r for r in scored if r["kind"] == "cell"), key=lambda r: r["scores"][t]["test_score"],
                        default=None)  # fmt: skip
        line = f"{t}: beat the random init: {', '.join(beat) or 'none'}; worse: {', '.join(worse) or 'none'}"
        if best is not None:
            line += f"; highest score: {best['name']} ({_f(best['scores'][t]['test_score'])})"
        if best_cell is not None and best_cell is not best:
            line += f", best cell: {best_cell['name']} ({_f(best_cell['scores'][t]['test_score'])})"
        out.append(line + ".")
    for c in report.get("cqt_effect", []):
        by = {v: [t for t in tasks if c["scores"][t]["verdict"] == v] for v in ("beats", "worse")}
        out.append(f"{c['a']} vs {c['b']}: better on {', '.join(by['beats']) or 'none'}, worse on "
                   f"{', '.join(by['worse']) or 'none'} (paired, 95% CI).")  # fmt: skip
    cells_ = [r for r in rows_ if r["kind"] == "cell"]
    above = [r["name"] for r in cells_ if r["pretrain"]["margin_min"] > 0]
    below = [r["name"] for r in cells_ if r["pretrain"]["ce_gain"] > 0]
    out.append(f"Pretraining: val accuracy above the majority rate in every codebook: {', '.join(above) or 'none'}; "
               f"val CE below the unigram floor: {', '.join(below) or 'none'} (of {len(cells_)} cells).")  # fmt: skip
    return out


SCORES_NOTE = (
    "Test score at the layer chosen on validation, 95% bootstrap CI over test clips. Mark: paired comparison with "
    "the random init of the same architecture over the same test clips: ▲ beats it (whole 95% CI of the difference "
    "above 0), ▼ worse, = no difference detectable."
)
CQT_NOTE = (
    "Each teacher's `with` cell against its other CQT variants on the same test clips: > 0 (beats) means the cell "
    "trained with the CQT target probes better."
)
PRETRAIN_NOTE = (
    "Margin: masked accuracy minus the frame-matched majority rate, per codebook (0 = predicts the most frequent "
    "code). CE gain: unigram floor minus masked CE, nats per codebook (> 0 = learned something beyond the code "
    "frequencies). The CQT MSE is on each cell's own scale (`log` is standardised; `without` does not train it)."
)
PRETRAIN_HEAD = ("cell", "steps", "K", "margin mean [min, max]", "val CE", "unigram floor", "CE gain", "CQT MSE",
                 "collapse warning", "wall", "pretraining MLflow run")  # fmt: skip


def _header(report: Mapping[str, Any], files: Mapping[str, str] | None) -> list[str]:
    p, tm, m, corpus = report["params"], report["timing"], report["machine"], report.get("corpus")
    steps = next((r["pretrain"]["steps"] for r in report["rows"] if r.get("pretrain")), None)
    corpus_line = f"{corpus['clips']} clips, {corpus['minutes']:.1f} min ({corpus['dir']})" if corpus else "n/a"
    lines = [
        f"# {report['title']}: which teacher, and does the CQT target help?",
        "",
        f"Generated {report['generated']} by `mert ablation report` (code {report['git_commit']}).",
        "",
        f"- **Command**: `{report['command']}` (parameters: `params.yaml` section `ablation:`; profile "
        f"`{p['profile']}`, {steps} steps per cell, teachers {', '.join(p['teachers'])}, CQT variants "
        f"{', '.join(p['cqt'])}, baselines {', '.join(p['baselines'])}, tasks {', '.join(p['tasks'])}).",
        f"- **Pretraining corpus**: {corpus_line}.",
        f"- **Wall time**: {_minutes(tm.get('stages_s'))} in the ablation's stages (labels "
        f"{_minutes(tm.get('label_s'))}, pretraining {_minutes(tm.get('pretrain_s'))}, probing "
        f"{_minutes(tm.get('probe_s'))}: the sum of the wall times each stage measured; not included: DVC's "
        f"bookkeeping and the main pipeline's demo-corpus and ingest stages); first stage start to last stage "
        f"end: {_minutes(tm.get('span_s'))}.",
        f"- **Machine**: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}, "
        f"torch {m['torch']}, OMP_NUM_THREADS={m['omp_num_threads']}, load average at report time "
        f"{m['load_average_at_report']} (a shared machine: times are not benchmarks).",
    ]
    if files:
        names = ", ".join(f"`{v}`" for v in files.values())
        lines.append(
            f"- **Files**: {names}; MLflow experiment `{p['experiment']}` (one run per row), pretraining runs in "
            f"`{p['experiment']}-pretrain`."
        )
    return lines


def _scores_table(report: Mapping[str, Any]) -> str:
    tasks = report["tasks"]
    head = ["row", "kind"] + [f"{t} ({tasks[t]['metric']})" for t in tasks]
    body = [[r["name"], r["kind"]] + [_score_cell(r["scores"][t]) for t in tasks] for r in report["rows"]]
    body.append(["majority rate", "reference"] + [_f(tasks[t]["majority_rate"]) for t in tasks])
    body.append(["n test clips", ""] + [str(tasks[t]["n_test"]) for t in tasks])
    return _table(head, body)


def _diff_table(report: Mapping[str, Any]) -> str:
    tasks = list(report["tasks"])
    rows_ = [r for r in report["rows"] if r["kind"] != "random-init"]
    return _table(["row"] + tasks, [[r["name"]] + [_diff_cell(r["scores"][t]["vs_random"]) for t in tasks]
                                    for r in rows_])  # fmt: skip


def _cqt_table(report: Mapping[str, Any]) -> str:
    tasks = list(report["tasks"])
    body = [[f"{c['a']} - {c['b']}"] + [_diff_cell(c["scores"][t]) for t in tasks] for c in report["cqt_effect"]]
    return _table(["teacher: with - variant"] + tasks, body)


def _pretrain_table(report: Mapping[str, Any]) -> str:
    body = []
    for r in report["rows"]:
        pre = r.get("pretrain")
        if not pre:
            continue
        margin = (f"{_f(pre['margin_mean'], 4, True)} [{_f(pre['margin_min'], 4, True)}, "
                  f"{_f(pre['margin_max'], 4, True)}]")  # fmt: skip
        body.append([r["name"], pre["steps"], pre["codebooks"], margin, _f(pre["val_ce"]), _f(pre["unigram_ce"]),
                     _f(pre["ce_gain"], sign=True), _f(pre["cqt_mse"], 4), "yes" if pre["collapsed"] else "no",
                     _minutes(pre["wall_s"]), pre["run_id"] or "-"])  # fmt: skip
    return _table(PRETRAIN_HEAD, body)


def markdown(report: Mapping[str, Any], files: Mapping[str, str] | None = None) -> str:
    """The report as Markdown: how it was made, probe scores, differences to the floor, pretraining, findings."""
    lines = _header(report, files)
    lines += ["", "## Probe scores", "", SCORES_NOTE, "", _scores_table(report), ""]
    lines += ["## Difference to the random-init floor (paired bootstrap, 95% CI)", "", _diff_table(report), ""]
    if report.get("cqt_effect"):
        lines += ["## Does the CQT target help? (with minus the other variant, paired bootstrap, 95% CI)", "",
                  CQT_NOTE, "", _cqt_table(report), ""]  # fmt: skip
    lines += ["## Pretraining (final validation, masked frames)", "", PRETRAIN_NOTE, "", _pretrain_table(report), ""]
    lines += ["## Findings (computed)", ""] + [f"- {x}" for x in findings(report)]
    return "\n".join(lines) + "\n"


def plot(report: Mapping[str, Any], path: str | Path) -> Path:
    """PNG: per task, every row's score with its 95% CI; the random init as a line with its CI band, the
    majority rate dotted. Colour = teacher, marker = CQT variant (filled: with, hollow: without, triangle: log).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mert.utils.io import atomic_write

    tasks, rows_ = list(report["tasks"]), report["rows"]
    teachers = list(dict.fromkeys(r["teacher"] for r in rows_ if r["teacher"]))
    cmap = plt.get_cmap("tab10")
    ncols = min(2, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.5 + 0.5 * len(rows_) * ncols, 0.6 + 4.2 * nrows), dpi=90,
                             squeeze=False)  # fmt: skip
    for ax, t in zip(axes.flat, tasks):
        _plot_task(ax, t, rows_, report["tasks"][t], teachers, cmap)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    steps = next((r["pretrain"]["steps"] for r in rows_ if r.get("pretrain")), None)
    fig.suptitle(f"{report['title']} ({report['params']['profile']}, {steps} steps): test score [95% CI] per task\n"
                 "colour = teacher; filled = with CQT, hollow = without, triangle = log CQT; grey squares = "
                 "baselines; black line + band = random init [95% CI]", fontsize=9)  # fmt: skip
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return Path(path)


def _plot_task(ax, task: str, rows_, meta, teachers: list[str], cmap) -> None:
    floor = next((r for r in rows_ if r["kind"] == "random-init"), None)
    if floor is not None:
        s = floor["scores"][task]
        ax.axhline(s["test_score"], color="k", lw=1.2, label="random init")
        if s.get("ci_low") is not None:
            ax.axhspan(s["ci_low"], s["ci_high"], color="k", alpha=0.08)
    if isinstance(meta.get("majority_rate"), (int, float)):
        ax.axhline(meta["majority_rate"], color="gray", ls=":", lw=1, label="majority rate")
    for x, r in enumerate(rows_):
        s = r["scores"][task]
        if not isinstance(s.get("test_score"), (int, float)):
            continue
        color = cmap(teachers.index(r["teacher"]) % 10) if r["teacher"] else "0.35"
        marker = {"with": "o", "without": "o", "log": "^"}.get(r["cqt"], "s")
        face = "white" if r["cqt"] == "without" else color
        err = None
        if s.get("ci_low") is not None:
            err = [[s["test_score"] - s["ci_low"]], [s["ci_high"] - s["test_score"]]]
        ax.errorbar([x], [s["test_score"]], yerr=err, fmt=marker, color=color, mfc=face, ms=7, capsize=3)
    ax.set_xticks(range(len(rows_)), [r["name"] for r in rows_], rotation=60, ha="right", fontsize=8)
    ax.set_title(f"{task} ({meta.get('metric')})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


# ----------------------------------------------------------------------------------------------- MLflow
def ablation_id(report: Mapping[str, Any]) -> str:
    """A short hash of what the report compares (scores, CIs, pretraining numbers, params): the same inputs give
    the same id, so a re-run finds its runs instead of logging them twice.
    """
    from mert.utils.io import sha256_json

    keep = {"params": report["params"], "rows": report["rows"], "tasks": report["tasks"]}
    return sha256_json(json.loads(json.dumps(keep, default=str)))[:16]


def _row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t, s in row["scores"].items():
        for k, name in (("test_score", "score"), ("ci_low", "ci_low"), ("ci_high", "ci_high")):
            if isinstance(s.get(k), (int, float)):
                out[f"{t}/{name}"] = float(s[k])
        vs = s.get("vs_random") or {}
        for k in ("diff", "low", "high"):
            if isinstance(vs.get(k), (int, float)):
                out[f"{t}/vs_random_{k}"] = float(vs[k])
    pre = row.get("pretrain")
    if pre:
        for k in ("margin_mean", "margin_min", "margin_max", "val_ce", "unigram_ce", "ce_gain", "cqt_mse", "wall_s"):
            if isinstance(pre.get(k), (int, float)):
                out[f"pretrain/{k}"] = float(pre[k])
        out.update({f"pretrain/margin_{k}": float(v) for k, v in enumerate(pre["margins"])})
    return out


def _row_tags(row: Mapping[str, Any], report: Mapping[str, Any], aid: str) -> dict[str, str]:
    tags = {"ablation.id": aid, "ablation.row": row["name"], "kind": row["kind"], "command": report["command"],
            "git_commit": report["git_commit"]}  # fmt: skip
    for t, s in row["scores"].items():
        tags[f"verdict.{t}"] = (s.get("vs_random") or {}).get("verdict", "floor" if row["kind"] == "random-init"
                                                                         else "n/a")  # fmt: skip
    pre = row.get("pretrain")
    if pre:
        tags["pretrain_run_id"] = str(pre.get("run_id"))
        tags["pretrain_experiment"] = f"{report['params']['experiment']}-pretrain"
        tags["collapse.warning"] = str(pre["collapsed"]).lower()
    return tags


def _row_params(row: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    p = report["params"]
    out = {"kind": row["kind"], "profile": p["profile"], "tasks": ",".join(p["tasks"])}
    if row.get("pretrain"):
        out.update(teacher=row["teacher"], cqt=row["cqt"], steps=row["pretrain"]["steps"],
                   objective_overrides=json.dumps(row["pretrain"]["objective_overrides"], sort_keys=True))  # fmt: skip
    return out


def _existing(client, experiment_id: str, aid: str) -> dict[str, str]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`ablation.id` = '{aid}'", max_results=1000)
    return {r.data.tags.get("ablation.row"): r.info.run_id for r in runs}


def log_runs(report: Mapping[str, Any], params: AblationParams, artifacts: Sequence[str | Path] = ()) -> dict:
    """One MLflow run per row in ``params.experiment``: params (teacher, cqt, profile, steps), metrics (per task:
    score, CI, difference to the random init; pretraining margins and CE), tags (verdict per task, the pretraining
    run id, the ablation id) and ``artifacts``. Rows already logged with the same ablation id are not logged again.

    Returns:
        ``{row name: run id}``.
    """
    from mert.tracking import MLflowLogger, connect

    aid = ablation_id(report)
    client, exp_id = connect(params.tracking_uri, params.experiment)
    have = _existing(client, exp_id, aid)
    ids = {}
    for row in report["rows"]:
        if row["name"] in have:
            ids[row["name"]] = have[row["name"]]
            continue
        ml = MLflowLogger(params.tracking_uri, params.experiment, run_name=row["name"],
                          tags=_row_tags(row, report, aid), system_metrics=False)  # fmt: skip
        try:
            ml.log_config(_row_params(row, report))
            ml.log_dict(_row_metrics(row), step=0)
            for path in artifacts:
                ml.log_artifact(path)
        finally:
            ml.close()
        ids[row["name"]] = ml.run_id
    return ids


# ----------------------------------------------------------------------------------------------- entry point
def write_report(params: AblationParams, *, command: str = COMMAND, corpus_dir: str | Path | None = None,
                 track: bool = True) -> dict[str, Any]:  # fmt: skip
    """Build the report and write ``<report>.md``, ``.json`` and ``.png`` (atomically); log the MLflow runs.

    Returns:
        The report dict (as written to the JSON, with ``mlflow`` run ids when ``track``).
    """
    from mert.utils.io import atomic_write_json, atomic_write_text

    t0 = time.perf_counter()
    lay = Layout(params)
    files = {k: str(lay.report(k)) for k in (".md", ".json", ".png")}
    report = build(params, command=command, corpus_dir=corpus_dir)
    report["files"] = files
    Path(files[".png"]).parent.mkdir(parents=True, exist_ok=True)
    plot(report, files[".png"])
    if track:
        report["mlflow"] = {"experiment": params.experiment, "ablation_id": ablation_id(report),
                            "runs": log_runs(report, params, [files[".png"]])}  # fmt: skip
    atomic_write_text(files[".md"], markdown(report, files))
    atomic_write_json(files[".json"], report)
    log.info("ablation report %s (%.1f s)", ", ".join(files.values()), time.perf_counter() - t0)
    return report
