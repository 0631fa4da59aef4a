"""Probes and the layer sweep on synthetic features with a known answer (no audio, fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mert.probe import metrics
from mert.probe.beats import frame_targets, pick_peaks
from mert.probe.features import Features
from mert.probe.probes import LSTMMaskProbe, MLPProbe
from mert.probe.sweep import SweepConfig, build_splits, sweep
from mert.probe.tasks import Example, Task

CFG = SweepConfig(lrs=(1e-3, 1e-2), max_epochs=50, patience=10, hidden=32)


def synthetic(kind: str, n: int = 60, n_layers: int = 3, dim: int = 8, informative: int = 1, seed: int = 0):
    """Only layer ``informative`` carries the target; the others are noise."""
    rng = np.random.default_rng(seed)
    examples, rows = [], {}
    for i in range(n):
        split = "train" if i < n * 0.6 else ("valid" if i < n * 0.8 else "test")
        x = rng.standard_normal((2, n_layers, dim)).astype(np.float32)  # 2 windows per clip
        if kind == "multiclass":
            target = i % 3
            x[:, informative, target] += 4.0
        elif kind == "multilabel":
            target = np.array([i % 2, (i // 2) % 2, 1 - i % 2], np.float32)
            x[:, informative, :3] += 3.0 * target
        else:
            target = np.array([i % 5, -(i % 3)], np.float32)
            x[:, informative, :2] += 3.0 * target
        e = Example(Path(f"/x/{i}.wav"), split, target)
        examples.append(e)
        rows[e.key] = x
    classes = {"multiclass": ["a", "b", "c"], "multilabel": ["t0", "t1", "t2"], "regression": ["u", "v"]}[kind]
    return Task("synthetic", kind, examples, classes), Features(rows, {}, n_layers)


@pytest.mark.parametrize(("kind", "floor"), [("multiclass", 0.9), ("multilabel", 0.9), ("regression", 0.8)])
def test_sweep_finds_the_informative_layer(kind, floor):
    task, feats = synthetic(kind)
    splits, norm = build_splits(task, feats)
    res = sweep(task, splits, norm, CFG)
    assert res.metric == metrics.PRIMARY[kind]
    assert set(res.per_layer) == {"0", "1", "2", "weighted"}
    assert res.best_layer in ("1", "weighted") and res.test_metrics[res.metric] >= floor
    assert res.per_layer["1"] > max(res.per_layer["0"], res.per_layer["2"])
    assert len(res.layer_weights) == 3 and abs(sum(res.layer_weights) - 1) < 1e-6


def test_sweep_is_deterministic():
    task, feats = synthetic("multiclass", seed=1)
    a = sweep(task, *build_splits(task, feats), CFG)
    b = sweep(task, *build_splits(task, feats), CFG)
    assert a.per_layer == b.per_layer and a.test_metrics == b.test_metrics


def test_mlp_probe_shape_and_weighted_sum():
    x = torch.randn(5, 4, 16)  # (R, n_layers, D)
    probe = MLPProbe(4, 16, 7, layer=None)
    assert probe(x).shape == (5, 7) and probe.select.layer_weights() == [0.25] * 4
    assert [m.__class__.__name__ for m in probe.net] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert probe.net[0].out_features == 512 and probe.net[2].p == 0.2  # the MARBLE probe by default


def test_lstm_mask_probe_shape():
    probe = LSTMMaskProbe(3, 8, n_bins=10, n_sources=4, layer=2, hidden=6, num_layers=3)
    m = probe(torch.randn(2, 7, 3, 8))
    assert m.shape == (2, 4, 10, 7) and bool(((m >= 0) & (m <= 1)).all())
    assert probe.lstm.bidirectional and probe.lstm.num_layers == 3


def test_beat_targets_and_peak_picking():
    beats = np.array([0.2, 0.6, 1.0])
    y = frame_targets(beats, 90)
    assert y[15] == 1.0 and y[14] == y[16] == 0.5 and y.sum() == 6.0
    est = pick_peaks(y + 0.01 * np.random.default_rng(0).random(90), threshold=0.5)
    assert metrics.beat_f1([est], [beats])["beat_f1"] == 1.0


def test_metrics_match_the_libraries():
    import mir_eval

    classes = ["C major", "G major", "A minor"]
    probs = np.eye(3)[[1, 2, 0]]  # predicted G, Am, C for truths C, C, C
    m = metrics.classification(probs, np.array([0, 0, 0]), classes, key=True)
    expected = np.mean([mir_eval.key.weighted_score("C major", p) for p in ("G major", "A minor", "C major")])
    assert m["accuracy"] == pytest.approx(1 / 3) and m["key_weighted"] == pytest.approx(expected)
    assert expected == pytest.approx((0.5 + 0.3 + 1.0) / 3)
    y = np.array([[1, 0], [0, 0], [1, 0]])  # tag 1 never positive: not scoreable
    ml = metrics.multilabel(np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2]]), y)
    assert ml["roc_auc"] == 1.0 and ml["ap"] == 1.0 and ml["n_tags_scored"] == 1
    ref = np.sin(np.arange(1000) / 10)
    assert metrics.sdr(ref + 0.1 * ref, ref) == pytest.approx(20.0, abs=1e-6)
