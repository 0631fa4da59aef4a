"""The flow's probe reporting: per-task evidence tables (artifacts and the final summary) built from results files."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("prefect")


def _results(path, scores, label, task):
    from mert.probe.evidence import bootstrap_ci

    rec = {"keys": [f"audio/{i:03d}.wav" for i in range(len(scores))], "scores": [float(s) for s in scores]}
    lo, hi = bootstrap_ci("key", rec)
    path.write_text(json.dumps({
        "task": task, "task_kind": "key", "metric": "key_weighted", "test_score": float(np.mean(scores)),
        "ci_low": lo, "ci_high": hi, "n_test": len(scores), "majority_rate": 0.0625, "best_layer": "2",
        "majority_baseline": "always 'C major' (the most frequent train class)", "model": {"label": label},
        "test_clips": rec}))  # fmt: skip
    return str(path)


def test_probe_table_artifacts_and_final_report(tmp_path, monkeypatch, capsys):
    import flows.pipeline as pipeline

    tables, markdowns = [], []
    monkeypatch.setattr(pipeline, "create_table_artifact", lambda **kw: tables.append(kw))
    monkeypatch.setattr(pipeline, "create_markdown_artifact", lambda **kw: markdowns.append(kw))
    rng = np.random.default_rng(0)
    rows = []
    for task in ("key", "pitch"):
        random = (rng.random(120) < 0.2).astype(float)
        trained = np.where(rng.random(120) < 0.5, 1.0, random) if task == "key" else random
        for spec, scores in (("models:/mert-tiny/1", trained), ("random:mert-tiny", random), ("mfcc", random),
                             ("chroma", random)):  # fmt: skip
            row = {
                "task": task,
                "model": spec,
                "profile": "mert-tiny",
                "label": spec,
                "results": _results(tmp_path / f"{task}-{spec.replace('/', '_')}.json", scores, spec, task),
            }
            if spec.startswith("models:/"):
                row |= {"label": "mert-tiny", "role": "pretrained"}
            rows.append(row)
    summary = pipeline._probe_table(rows)
    assert [t["key"] for t in tables] == ["probe-mert-tiny-key", "probe-mert-tiny-pitch"]
    assert [r["model"] for r in tables[0]["table"]] == ["mert-tiny", "random:mert-tiny", "mfcc", "chroma"]
    assert tables[0]["table"][0]["n test"] == 120 and tables[0]["table"][0]["majority rate"] == "0.062"
    assert "-> beats its random init" in tables[0]["description"]
    assert "mert-tiny vs its random init on pitch: +0.000 [+0.000, +0.000] -> no difference detectable" in (
        tables[1]["description"])  # fmt: skip
    assert markdowns[0]["key"] == "probe-scores" and markdowns[0]["markdown"].count("### ") == 2
    monkeypatch.setenv("COLUMNS", "160")  # rich's console width
    pipeline.print_report({"probe_summary": summary, "pretrain": {}})
    out = capsys.readouterr().out
    assert "key [mert-tiny]: test key_weighted" in out
    assert "score [95% CI]" in out and "n test" in out and "majority rate" in out
    assert "mert-tiny vs its random init on key: +0." in out and "-> beats its random init" in out
    assert "mert-tiny vs mfcc (best handcrafted) on key" in out
    assert "majority rate: always 'C major'" in out


def test_random_baseline_follows_the_profile_preset():
    from flows.pipeline import _baseline_specs

    assert _baseline_specs(["mfcc", "chroma", "random"], "mert-95m") == ["mfcc", "chroma", "random:mert-95m"]
    assert _baseline_specs(["random:mert-tiny"], "mert-95m") == ["random:mert-tiny"]  # an explicit spec is kept
    assert _baseline_specs(None, "mert-tiny") == []
