"""scripts/plot_variants.py: paired differences per row and task, the table and the forest plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mert.probe import metrics

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("plot_variants", ROOT / "scripts/plot_variants.py")
pv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pv)


def _write(path: Path, scores, task: str) -> None:
    keys = [f"audio/{i:03d}.flac" for i in range(len(scores))]
    rec = {"task": task, "task_kind": "multiclass", "metric": metrics.PRIMARY["multiclass"],
           "test_score": float(np.mean(scores)), "model": {"label": path.stem},
           "test_clips": {"keys": keys, "scores": list(map(float, scores))}}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def test_rows_get_paired_verdicts_their_own_baseline_and_a_plot(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random(150) < 0.4).astype(float)
    better = np.where(rng.random(150) < 0.6, 1.0, base)  # never worse than the baseline, often right where it failed
    for task in ("a", "b"):
        _write(tmp_path / f"random/{task}.json", base, task)
        _write(tmp_path / f"good/{task}.json", better, task)
        _write(tmp_path / f"own_twin/{task}.json", better, task)  # a row compared with a twin equal to itself
    _write(tmp_path / "bad/a.json", base * 0, "a")  # only task a: task b is left out of this row
    rows = [["good", str(tmp_path / "good/{task}.json")], ["bad", str(tmp_path / "bad/{task}.json")],
            ["same", str(tmp_path / "good/{task}.json"), str(tmp_path / "own_twin/{task}.json")]]  # fmt: skip
    table = pv.comparisons(rows, str(tmp_path / "random/{task}.json"), ("a", "b"), n_boot=200)
    assert {t: c.verdict for t, c in table["good"].items()} == {"a": "beats", "b": "beats"}
    assert list(table["bad"]) == ["a"] and table["bad"]["a"].verdict == "worse"
    assert table["same"]["a"].diff == 0 and table["same"]["a"].verdict == "no difference detectable"
    md = pv.markdown(table, ("a", "b"))
    assert md.splitlines()[2].startswith("| good | +0.") and "▲" in md.splitlines()[2]
    assert md.splitlines()[3].endswith("▼ |  |")  # bad: worse on a, nothing on b
    png = pv.plot(table, ("a", "b"), tmp_path / "out/plot.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in png.parent.iterdir()] == ["plot.png"]


def test_a_row_needs_a_name_and_a_results_template():
    with pytest.raises(SystemExit, match="NAME RESULTS"):
        pv.comparisons([["only-a-name"]], "x/{task}.json", ("a",))
