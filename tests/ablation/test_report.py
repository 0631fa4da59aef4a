"""The ablation report on fake stage outputs: tables, JSON, plot, verdicts against the random init, MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mert.ablation.params import AblationParams
from mert.ablation.plan import CELL_FILE, STAGE_FILE, Layout, rows
from mert.ablation.report import markdown, pretrain_summary, write_report

N = 40  # test clips per task
TASKS = {"key": "key_weighted", "pitch": "accuracy"}


def _scores(name: str, task: str) -> np.ndarray:
    """Per-clip scores: random = half right; rvq-with beats it on key; rvq-without is worse everywhere; the rest tie."""
    half = (np.arange(N) % 2).astype(float)
    if name == "rvq-with" and task == "key":
        return np.ones(N)
    if name == "rvq-without":
        return np.zeros(N)
    if name == "mfcc":
        return np.where(np.arange(N) < 30, 1.0, half)  # 35 of 40 right
    return half


def _results(name: str, task: str) -> dict:
    s = _scores(name, task)
    return {"task": task, "task_kind": "key" if task == "key" else "multiclass", "metric": TASKS[task],
            "test_score": float(s.mean()), "ci_low": float(s.mean()) - 0.1, "ci_high": float(s.mean()) + 0.1,
            "n_test": N, "majority_rate": 0.25, "majority_baseline": "always 'C major'", "best_layer": "1",
            "model": {"label": name},
            "test_clips": {"keys": [f"test/clip{i:02d}.wav" for i in range(N)], "scores": s.tolist()}}  # fmt: skip


def _val(teacher: str, margins: list[float], ce: float, floor: float) -> dict:
    val = {"val/collapsed": 0.0, "val/loss/cqt_mse": 0.5}
    for k, m in enumerate(margins):
        val |= {f"val/acc_margin_{k}": m, f"val/acc/{teacher}_{k}": 0.1 + m, f"val/majority_{k}": 0.1,
                f"val/loss/{teacher}_ce_{k}": ce, f"val/unigram_ce_{k}": floor}  # fmt: skip
    return val


def _stage(path: Path, wall: float, start: str = "2025-01-01T10:00:00+00:00",
           end: str = "2025-01-01T10:00:10+00:00", **extra) -> None:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"wall_s": wall, "started": start, "finished": end, **extra}))


def fake_ablation(tmp_path: Path, uri: str | None = None) -> AblationParams:
    """Every file the report reads, for a 2 teachers x 2 CQT grid, random + mfcc baselines, 2 tasks."""
    ab = AblationParams(teachers=["rvq", "kmeans"], cqt=["with", "without"], tasks=list(TASKS),
                        baselines=["mfcc"], dir=str(tmp_path / "abl"),
                        report=str(tmp_path / "docs" / "ablation"), tracking_uri=uri, n_boot=200)  # fmt: skip
    lay = Layout(ab)
    for name, kind in rows(ab):
        for task in TASKS:
            out = lay.probe(name, task)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(_results(name, task)))
            _stage(out.parent / STAGE_FILE, 60.0)
        if kind == "cell":
            teacher, cqt = name.split("-")
            K = 8 if teacher == "rvq" else 1
            margins = [0.02] * K if name == "kmeans-with" else [0.0] * K
            run = lay.run(name)
            run.mkdir(parents=True)
            (run / "result.json").write_text(json.dumps({"step": 600, "run_id": f"run-{name}",
                                                         "val": _val(teacher, margins, 4.0, 4.2)}))  # fmt: skip
            _stage(run / CELL_FILE, 300.0, end="2025-01-01T11:00:00+00:00", objective_overrides={"cqt": cqt})
    for teacher in ab.teachers:
        _stage(lay.labels(teacher) / STAGE_FILE, 120.0, start="2025-01-01T09:00:00+00:00")
    return ab


def test_pretrain_summary_reads_margins_and_floor(tmp_path: Path):
    ab = fake_ablation(tmp_path)
    s = pretrain_summary(Layout(ab).run("kmeans-with"))
    assert (s["codebooks"], s["margins"], s["steps"], s["run_id"]) == (1, [0.02], 600, "run-kmeans-with")
    assert s["ce_gain"] == pytest.approx(0.2) and s["wall_s"] == 300.0 and not s["collapsed"]


def test_report_files_verdicts_and_mlflow_runs(tmp_path: Path, mlflow_uri: str):
    ab = fake_ablation(tmp_path, mlflow_uri)
    report = write_report(ab, command="dvc repro ablation/dvc.yaml")
    for suffix in (".md", ".json", ".png"):
        assert Path(ab.report + suffix).stat().st_size > 0
    assert Path(ab.report + ".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = json.loads(Path(ab.report + ".json").read_text())
    by = {r["name"]: r for r in saved["rows"]}
    assert list(by) == ["rvq-with", "rvq-without", "kmeans-with", "kmeans-without", "random", "mfcc"]
    verdict = {(n, t): (r["scores"][t]["vs_random"] or {}).get("verdict") for n, r in by.items() for t in TASKS}
    assert verdict[("rvq-with", "key")] == "beats" and verdict[("rvq-with", "pitch")] == "no difference detectable"
    assert verdict[("rvq-without", "key")] == verdict[("rvq-without", "pitch")] == "worse"
    assert verdict[("kmeans-with", "key")] == "no difference detectable"
    assert verdict[("mfcc", "pitch")] == "beats" and verdict[("random", "key")] is None
    assert by["rvq-with"]["scores"]["key"]["vs_random"]["diff"] == pytest.approx(0.5)
    assert by["kmeans-with"]["pretrain"]["margin_min"] == pytest.approx(0.02)
    effect = {c["teacher"]: {t: c["scores"][t]["verdict"] for t in TASKS} for c in saved["cqt_effect"]}
    assert effect == {"rvq": {"key": "beats", "pitch": "beats"},
                      "kmeans": {"key": "no difference detectable", "pitch": "no difference detectable"}}  # fmt: skip
    t = saved["timing"]
    assert (t["label_s"], t["pretrain_s"], t["probe_s"]) == (240.0, 1200.0, 60.0 * 12)
    assert t["stages_s"] == 240.0 + 1200.0 + 720.0 and t["span_s"] == 7200.0
    assert saved["command"] == "dvc repro ablation/dvc.yaml" and saved["machine"]["cores"] >= 1

    md = Path(ab.report + ".md").read_text()
    assert "`dvc repro ablation/dvc.yaml`" in md and "36.0 min in the ablation's stages" in md
    assert "| rvq-with | cell | 1.000 [0.900, 1.100] ▲ | 0.500 [0.400, 0.600] = |" in md
    assert "key: beat the random init: rvq-with, mfcc; worse: rvq-without" in md
    assert "every codebook: kmeans-with;" in md
    assert "rvq-with vs rvq-without: better on key, pitch, worse on none" in md
    assert "| rvq-with - rvq-without | +1.000 [+1.000, +1.000] beats |" in md

    from mert.tracking import connect

    client, exp = connect(mlflow_uri, "mert-ablation")
    runs = {r.info.run_name: r for r in client.search_runs([exp])}
    assert set(runs) == set(by) and set(report["mlflow"]["runs"]) == set(by)
    cell = runs["rvq-with"]
    assert cell.data.tags["verdict.key"] == "beats" and cell.data.tags["pretrain_run_id"] == "run-rvq-with"
    assert cell.data.params["teacher"] == "rvq" and cell.data.params["cqt"] == "with"
    assert cell.data.metrics["key/score"] == 1.0 and cell.data.metrics["key/vs_random_diff"] == pytest.approx(0.5)
    assert runs["random"].data.tags["verdict.key"] == "floor" and runs["mfcc"].data.tags["kind"] == "handcrafted"
    assert "pretrain/margin_mean" in runs["kmeans-with"].data.metrics

    again = write_report(ab)  # same inputs: the runs are found, not logged twice
    assert again["mlflow"]["runs"] == report["mlflow"]["runs"]
    assert len(client.search_runs([exp])) == len(by)


def test_missing_stage_output_names_the_file(tmp_path: Path):
    ab = fake_ablation(tmp_path)
    missing = Layout(ab).probe("kmeans-without", "pitch")
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        write_report(ab, track=False)


def test_markdown_without_timing_or_corpus_says_n_a(tmp_path: Path):
    from mert.ablation.report import build

    ab = fake_ablation(tmp_path)
    (Layout(ab).labels("rvq") / STAGE_FILE).unlink()
    md = markdown(build(ab))
    assert "n/a in the ablation's stages (labels n/a" in md and "Pretraining corpus**: n/a" in md
