"""Probe evidence: bootstrap CIs that cover known values, paired verdicts, reference rates, summaries, fast beat F1."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.stats import norm

from mert.probe import beats, evidence, metrics
from mert.probe.evidence import EvidenceError, bootstrap_ci, compare, reference_rate, summarize


# ---------------------------------------------------------------------------------------------- bootstrap CIs
def test_ci_of_per_clip_scores_covers_the_true_rate_and_is_deterministic():
    rng = np.random.default_rng(0)
    true, n, covered = 0.7, 150, 0
    for _ in range(200):
        rec = {"keys": [str(i) for i in range(n)], "scores": (rng.random(n) < true).astype(float)}
        lo, hi = bootstrap_ci("multiclass", rec, n_boot=400, seed=1)
        covered += lo <= true <= hi
    assert 0.90 <= covered / 200 <= 0.99  # nominal 95%
    rec = {"keys": [str(i) for i in range(n)], "scores": (rng.random(n) < true).astype(float).tolist()}
    assert bootstrap_ci("multiclass", rec, seed=3) == bootstrap_ci("multiclass", rec, seed=3)
    lo, hi = bootstrap_ci("multiclass", rec, seed=3)
    assert lo < np.mean(rec["scores"]) < hi and hi - lo < 0.2
    assert bootstrap_ci("multiclass", rec, n_boot=0) == (None, None)


def test_ci_recomputes_non_decomposable_metrics():
    rng = np.random.default_rng(1)
    covered_r2 = covered_auc = 0
    trials, n = 12, 200
    auc_true = float(norm.cdf(1.0 / np.sqrt(2)))  # binormal scores, shift 1: AUC = Phi(d / sqrt(2))
    for _ in range(trials):
        y = rng.standard_normal((n, 1))
        pred = y + 0.5 * rng.standard_normal((n, 1))  # R2 = 1 - 0.25 in the population
        lo, hi = bootstrap_ci("regression", {"keys": list(range(n)), "pred": pred, "truth": y}, n_boot=100, seed=2)
        covered_r2 += lo <= 0.75 <= hi
        tags = (rng.random((n, 1)) < 0.5).astype(float)
        scores = tags + rng.standard_normal((n, 1))
        lo, hi = bootstrap_ci("multilabel", {"keys": list(range(n)), "pred": scores, "truth": tags}, 100, 2)
        covered_auc += lo <= auc_true <= hi
    assert covered_r2 >= trials - 2 and covered_auc >= trials - 2  # nominal 95%: 11.4 of 12


# ---------------------------------------------------------------------------------------------- paired comparison
def _results(scores, task="key", keys=None, label="m", kind="key") -> dict:
    keys = keys or [f"audio/{i:03d}.wav" for i in range(len(scores))]
    return {"task": task, "task_kind": kind, "metric": metrics.PRIMARY[kind], "test_score": float(np.mean(scores)),
            "model": {"label": label}, "test_clips": {"keys": keys, "scores": list(map(float, scores))}}  # fmt: skip


def test_paired_comparison_verdicts():
    rng = np.random.default_rng(0)
    base = (rng.random(120) < 0.4).astype(float)
    better = np.where(rng.random(120) < 0.5, 1.0, base)  # right on half of the clips it got wrong, never worse
    c = compare(_results(better, label="pretrained"), _results(base, label="random"))
    assert c.verdict == "beats" and c.low > 0 and c.n == 120
    assert c.diff == pytest.approx(better.mean() - base.mean())
    assert c.text("mert-tiny", "its random init").startswith("mert-tiny vs its random init on key: +0.")
    assert c.text("mert-tiny", "its random init").endswith("-> beats its random init")
    assert compare(_results(base), _results(better)).verdict == "worse"
    same = compare(_results(base), _results(base))
    assert same.verdict == "no difference detectable" and same.diff == 0 and same.low == same.high == 0
    assert "-> no difference detectable" in same.text()
    assert compare(_results(better), _results(base), seed=5) == compare(_results(better), _results(base), seed=5)


def test_paired_comparison_aligns_clips_and_refuses_what_it_cannot_compare():
    scores = [1.0, 0.0, 1.0, 1.0]
    a = _results(scores)
    shuffled = _results(scores[::-1], keys=[f"audio/{i:03d}.wav" for i in range(4)][::-1])
    assert compare(a, shuffled).diff == 0 and compare(a, shuffled).n == 4
    fewer = _results(scores[:3])
    assert compare(a, fewer).n == 3
    with pytest.raises(EvidenceError, match="not results of the same task"):
        compare(a, _results(scores, task="pitch"))
    with pytest.raises(EvidenceError, match="share no test clip"):
        compare(a, _results(scores, keys=["x", "y", "z", "w"]))
    old = dict(a)
    del old["test_clips"]
    with pytest.raises(EvidenceError, match="re-run mert probe"):
        compare(a, old)
    reg = {"task": "t", "task_kind": "regression", "metric": "r2", "model": {"label": "r"},
           "test_clips": {"keys": ["a", "b", "c"], "pred": [[1], [2], [3]], "truth": [[1], [2], [3]]}}  # fmt: skip
    other = json.loads(json.dumps(reg))
    other["test_clips"]["truth"] = [[1], [2], [4]]
    with pytest.raises(EvidenceError, match="ground truth"):
        compare(reg, other)


# ---------------------------------------------------------------------------------------------- reference rates
def test_majority_rate_uses_the_most_frequent_train_class_and_the_task_metric():
    import mir_eval

    classes = ["a", "b", "c"]
    r = reference_rate("multiclass", [0, 0, 1, 2, 1, 0], [0, 1, 0, 0], classes)
    assert r["rate"] == 0.75 and "'a'" in r["baseline"]
    keys = ["C major", "F major", "A minor", "C minor"]  # estimate C major: same, fifth above, relative, parallel
    truth = [0, 1, 2, 3]
    r = reference_rate("key", [0, 0, 1], truth, keys)  # always C major
    expected = np.mean([mir_eval.key.weighted_score(keys[t], "C major") for t in truth])
    assert r["rate"] == pytest.approx(expected) == pytest.approx((1 + 0.5 + 0.3 + 0.2) / 4)
    train = np.array([[1.0, 2.0], [3.0, 4.0]])
    test = np.array([[2.0, 3.0], [2.0, 5.0], [2.0, 1.0]])
    r = reference_rate("regression", train, np.c_[test[:, 0] + [0, 1, -1], test[:, 1]], ["u", "v"])
    assert r["rate"] == pytest.approx(0.0)  # the train means equal the test means here: R2 exactly 0
    assert reference_rate("regression", train, test + 1, ["u", "v"])["rate"] < 0
    tags = np.array([[1, 0], [0, 1], [1, 1]], float)
    assert reference_rate("multilabel", tags, tags, ["x", "y"])["rate"] == 0.5


def test_beat_reference_is_a_grid_at_the_median_train_tempo():
    train = [np.arange(0.25, 8, 0.5), np.arange(0.25, 6, 0.5), np.arange(0.1, 8, 0.4)]
    grids, bpm, start = beats.grid_baseline(train, [4.0])
    assert bpm == pytest.approx(120.0) and start == pytest.approx(0.25)
    np.testing.assert_allclose(grids[0], np.arange(0.25, 4.0, 0.5))
    on_grid, off_grid = np.arange(0.25, 4, 0.5), np.arange(0.5, 4, 0.5)
    r = reference_rate("beats", train, [on_grid, off_grid], [], test_seconds=[4.0, 4.0], tolerance=0.07)
    assert r["rate"] == pytest.approx(0.5) and "120.0 BPM" in r["baseline"]  # F1 1 on the first clip, 0 on the other


# ---------------------------------------------------------------------------------------------- fast beat F1
def test_beat_matching_equals_mir_eval():
    import mir_eval

    rng = np.random.default_rng(0)
    warnings.simplefilter("ignore", UserWarning)  # mir_eval warns on empty beat lists
    for trial in range(1500):
        ref = np.sort(rng.uniform(0, 3, rng.integers(0, 15)))
        est = np.sort(rng.uniform(0, 3, rng.integers(0, 15)))
        if trial % 3 == 0:  # on the 75 Hz frame grid, with ties at exactly the window
            ref, est = np.round(ref * 75) / 75, np.round(est * 75) / 75
        window = (0.02, 0.07, 0.2, 0.5)[trial % 4]  # 0.2 and 0.5: windows holding several beats
        assert metrics.beat_matches(ref, est, window) == len(mir_eval.util.match_events(ref, est, window))
        assert metrics.beat_scores([est], [ref], window)[0] == mir_eval.beat.f_measure(ref, est, window)


def test_threshold_search_equals_decoding_each_threshold():
    import mir_eval

    rng = np.random.default_rng(1)
    acts = [rng.random(300).astype(np.float32) for _ in range(6)]
    refs = [np.sort(rng.uniform(0, 4, 8)) for _ in range(6)]
    per = beats.threshold_scores(acts, refs, beats.THRESHOLDS, 0.07)
    for k, t in enumerate(beats.THRESHOLDS):
        expected = [mir_eval.beat.f_measure(r, e, 0.07) for e, r in zip(beats.decode(acts, t), refs)]
        np.testing.assert_array_equal(per[k], expected)


# ---------------------------------------------------------------------------------------------- summaries
def _write(tmp_path, name, scores, label, task="key"):
    report = _results(scores, task=task, label=label)
    rate = 0.1
    lo, hi = bootstrap_ci("key", report["test_clips"])
    report |= {"ci_low": lo, "ci_high": hi, "n_test": len(scores), "majority_rate": rate, "best_layer": "1",
               "majority_baseline": "always 'C major' (the most frequent train class)"}  # fmt: skip
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return path


def test_summary_rows_and_verdicts_from_results_files(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random(100) < 0.3).astype(float)
    good = np.where(rng.random(100) < 0.6, 1.0, base)
    files = {"model": _write(tmp_path, "model", good, "models:/mert-tiny/1"),
             "random": _write(tmp_path, "random", base, "random:mert-tiny"),
             "mfcc": _write(tmp_path, "mfcc", base, "mfcc"),
             "chroma": _write(tmp_path, "chroma", good, "chroma")}  # fmt: skip
    entries = [{"results": files["model"], "label": "mert-tiny", "role": "pretrained", "group": "mert-tiny"}]
    entries += [{"results": files[k], "label": "random:mert-tiny" if k == "random" else k, "group": "mert-tiny"}
                for k in ("mfcc", "random", "chroma")]  # fmt: skip
    (s,) = summarize(entries)
    assert [r["model"] for r in s.rows] == ["mert-tiny", "random:mert-tiny", "chroma", "mfcc"]
    assert [r["role"] for r in s.rows] == ["pretrained", "random-init", "handcrafted", "handcrafted"]
    assert len(s.verdicts) == 2
    assert s.verdicts[0].startswith("mert-tiny vs its random init on key: +0.")
    assert s.verdicts[0].endswith("-> beats its random init")
    assert s.verdicts[1].startswith("mert-tiny vs chroma (best handcrafted) on key: +0.000 [")
    assert s.verdicts[1].endswith("-> no difference detectable")
    text = evidence.format_text(s)
    assert "score [95% CI]" in text and "n test" in text and "majority rate" in text and "100" in text
    assert f"{good.mean():.3f} [" in text and "0.100" in text and "always 'C major'" in text
    md = evidence.markdown(s)
    assert md.count("\n| ") == 5 and "- mert-tiny vs its random init" in md
    assert evidence.table_rows(s)[0]["score [95% CI]"] == evidence.score_cell(s.rows[0])
    json.dumps([x.as_dict() for x in summarize(entries)])


def test_summary_says_why_a_comparison_is_impossible(tmp_path):
    model = _write(tmp_path, "model", [1.0, 0.0, 1.0], "export")
    old = json.loads(model.read_text())
    for key in ("test_clips", "ci_low", "ci_high", "n_test", "majority_rate"):
        old.pop(key)
    (tmp_path / "old.json").write_text(json.dumps(old | {"model": {"label": "random:mert-tiny"}}))
    (s,) = summarize([{"results": model}, {"results": tmp_path / "old.json"}])
    assert "cannot compare" in s.verdicts[0] and "re-run mert probe" in s.verdicts[0]
    assert evidence.score_cell(s.rows[1]).endswith("[n/a]")
