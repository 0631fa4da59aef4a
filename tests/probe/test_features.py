"""Windowed extraction, the on-disk cache, frame mode and skipped files."""

from __future__ import annotations

import numpy as np
import pytest

from mert.probe.features import extract, windows
from mert.probe.models import load_model
from mert.probe.tasks import load_task


def test_windows_cover_the_clip():
    assert windows(24000 * 12, 5.0, 1.0) == [(0, 120000), (120000, 120000), (240000, 48000)]
    assert windows(24000 * 10 + 100, 5.0, 1.0) == [(0, 120000), (120000, 120000)]  # 4 ms tail dropped
    assert windows(12000, 5.0, 1.0) == [(0, 12000)]  # a short clip is its own window


def test_clip_features_are_cached(folder_task, tmp_path):
    task = load_task(folder_task)
    model = load_model("random:mert-tiny")
    first = extract(model, task.examples, "clip", 0.25, 0.1, batch_size=4, cache_root=tmp_path / "cache")
    assert not first.cached and len(first.rows) == len(task.examples)
    assert first.rows[task.examples[0].key].shape == (2, 3, 32)  # 0.5 s clips in 0.25 s windows, 3 layers
    again = extract(load_model("random:mert-tiny"), task.examples, "clip", 0.25, 0.1, cache_root=tmp_path / "cache")
    assert again.cached and all(np.array_equal(first.rows[k], again.rows[k]) for k in first.rows)
    other = extract(load_model("random:mert-tiny@5"), task.examples, "clip", 0.25, 0.1, cache_root=tmp_path / "cache")
    assert not other.cached  # another model identity -> another cache entry
    assert len(list((tmp_path / "cache").glob("*/*/index.json"))) == 2


@pytest.mark.parametrize("mode", ["clip", "frame"])
def test_batching_does_not_change_features(folder_task, mode):
    task = load_task(folder_task)
    model = load_model("random:mert-tiny")
    a = extract(model, task.examples[:5], mode, 5.0, batch_size=1)
    b = extract(model, task.examples[:5], mode, 5.0, batch_size=5)
    assert all(a.rows[k].shape == b.rows[k].shape and np.allclose(a.rows[k], b.rows[k], atol=1e-5) for k in a.rows)
    if mode == "frame":
        assert a.rows[task.examples[0].key].shape == (model.config.num_frames(12000), 3, 32)


def test_frame_mode_and_unreadable_files_are_skipped_with_reasons(csv_task):
    root = csv_task("beats")
    (root / "audio" / "000.wav").write_bytes(b"RIFF not really a wav")
    (root / "audio" / "001.wav").write_bytes(b"")
    task = load_task(root)
    feats = extract(load_model("mfcc"), task.examples, "frame")
    assert len(feats.skipped) == 2 and len(feats.rows) == len(task.examples) - 2
    assert any("empty file" in r for r in feats.skipped.values())
    assert feats.rows[task.examples[2].key].shape == (24000 // 320 + 1, 1, 40)  # (T, n_layers, D)


def test_long_audio_is_chunked_for_mert(csv_task):
    task = load_task(csv_task("beats"))
    model = load_model("random:mert-tiny")
    model.chunk_seconds = 0.4  # force 3 chunks on a 1 s clip
    feats = extract(model, task.examples[:1], "frame")
    assert feats.rows[task.examples[0].key].shape == (model.config.num_frames(24000), 3, 32)


@pytest.mark.parametrize("dtype", ["float16"])
def test_float16_cache(folder_task, tmp_path, dtype):
    task = load_task(folder_task)
    model = load_model("mfcc")
    a = extract(model, task.examples[:3], cache_root=tmp_path, dtype=dtype)
    b = extract(model, task.examples[:3], cache_root=tmp_path, dtype=dtype)
    assert b.cached and all(np.allclose(a.rows[k], b.rows[k], rtol=1e-2, atol=1e-2) for k in a.rows)
