"""Baseline teacher: student-aligned features, k-means fit / save / load / assign, the CLI."""

import json

import numpy as np
import pytest
import torch

from mert.cli import main
from mert.data import shards as S
from mert.teachers.base import TeacherError, student_frames
from mert.teachers.build import build_kmeans_teacher
from mert.teachers.config import KMeansParams, LabelParams
from mert.teachers.features import frame_features
from mert.teachers.kmeans import KMeansModel, KMeansTeacher, fit_kmeans
from mert.teachers.label_run import label_array
from mert.teachers.labels import LabelStore
from tests.conftest import noise, sine
from tests.teachers.conftest import make_corpus

SETTINGS = {"features": ["mfcc", "chroma"], "n_clusters": [8, 4], "n_mels": 32, "n_mfcc": 13}
SETTINGS.update(sample_rate=24_000, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("kmc")
    make_corpus(root, [2.0, 1.5, 2.5, 1.0])
    return S.Corpus(root)


@pytest.fixture(scope="module")
def model(corpus):
    return fit_kmeans(corpus, SETTINGS, fit_frames=100_000)


@pytest.mark.parametrize("name, dim", [("mfcc", 39), ("logmel", 32), ("chroma", 12)])
def test_features_are_student_aligned(name, dim):
    x = torch.from_numpy(noise(1.0))[None]
    f = frame_features(x, torch.tensor([24_000]), name, n_mels=32)
    assert f.shape == (1, student_frames(24_000), dim) and torch.isfinite(f).all()
    # frame i sees only samples [320 i, 320 i + 400): changing sample 400 leaves frame 0 alone
    y = x.clone()
    y[0, 400:] = 0
    g = frame_features(y, torch.tensor([24_000]), name, n_mels=32)
    if name != "mfcc":  # mfcc deltas look 4 frames ahead by design
        assert torch.equal(f[0, 0], g[0, 0]) and not torch.equal(f[0, 1], g[0, 1])


def test_chroma_of_a440_peaks_at_a():
    x = torch.from_numpy(sine(0.5, freq=440.0))[None]
    c = frame_features(x, torch.tensor([12_000]), "chroma")
    assert (c[0].argmax(-1) == 9).all()  # C = 0 ... A = 9


def test_fit_save_load_assign_round_trip(model, corpus, tmp_path):
    assert [c.shape for c in model.centroids] == [(8, 39), (4, 12)]
    model.save(tmp_path / "km")
    loaded = KMeansModel.load(tmp_path / "km")
    assert loaded.hash == model.hash and json.loads((tmp_path / "km" / "kmeans.json").read_text())["hash"] == model.hash
    assert not list((tmp_path / "km").glob("*.pkl"))
    a, b = KMeansTeacher(model), KMeansTeacher(loaded)
    assert a.identity() == b.identity() and a.name == "kmeans-mfcc+chroma"
    assert a.identity()["weights_sha256"] == model.hash
    clip = corpus.clips[0]
    x = torch.from_numpy(corpus.audio(clip))[None]
    codes = a.encode(x, torch.tensor([clip.length]))
    assert codes.shape[:2] == (1, 2) and codes.shape[2] >= student_frames(clip.length)
    assert torch.equal(codes, b.encode(x, torch.tensor([clip.length])))
    assert int(codes[0, 0].max()) < 8 and int(codes[0, 1].max()) < 4
    assert len(torch.unique(codes[0, 0])) > 1
    centroids = np.load(tmp_path / "km" / "centroids-0.npy")
    np.save(tmp_path / "km" / "centroids-0.npy", centroids + 1)
    with pytest.raises(TeacherError, match="do not match the recorded hash"):
        KMeansModel.load(tmp_path / "km")


def test_fit_is_seeded(model, corpus):
    again = fit_kmeans(corpus, SETTINGS, fit_frames=100_000)
    assert again.hash == model.hash


def test_windowed_labels_equal_whole_clip_labels(model, corpus):
    t = KMeansTeacher(model, chunk_frames=40)  # mfcc deltas need the 4 frames of context on each side
    for clip in corpus:
        x = corpus.audio(clip)
        n = student_frames(clip.length)
        whole = t.encode(torch.from_numpy(x)[None], torch.tensor([clip.length]))[0, :, :n].numpy()
        np.testing.assert_array_equal(label_array(t, x, batch_size=3), whole)


def test_build_fits_once_then_reuses_the_saved_model(corpus, tmp_path, monkeypatch):
    params = LabelParams(teacher="kmeans", kmeans=KMeansParams(features=["logmel"], n_clusters=[5], n_mels=16))
    t1 = build_kmeans_teacher(params, corpus.root, tmp_path)
    monkeypatch.setattr("mert.teachers.kmeans.fit_kmeans", lambda *a, **k: pytest.fail("refitted"))
    t2 = build_kmeans_teacher(params, corpus.root, tmp_path)
    assert t1.key == t2.key
    path = next((tmp_path / "kmeans-models").iterdir())
    params.kmeans.model = str(path)
    assert build_kmeans_teacher(params).key == t1.key
    params.kmeans.n_clusters = [6]
    with pytest.raises(TeacherError, match="was fitted with"):
        build_kmeans_teacher(params)


def test_cli_labels_a_corpus_with_the_kmeans_teacher(tmp_path, capsys):
    make_corpus(tmp_path / "c", [1.0, 1.2, 0.01])
    (tmp_path / "params.yaml").write_text(
        "label:\n  teacher: kmeans\n  device: cpu\n  kmeans:\n    features: [mfcc]\n    n_clusters: [6]\n"
    )
    argv = ["label", str(tmp_path / "c"), str(tmp_path / "l"), "--params", str(tmp_path / "params.yaml")]
    assert main([*argv, "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["computed"], out["rejected"], out["reasons"]) == (2, 1, {"too short": 1})
    store = LabelStore.open(tmp_path / "l", "kmeans-mfcc")
    corpus = S.Corpus(tmp_path / "c")
    assert store.load(corpus.clips[0]).shape == (1, student_frames(corpus.clips[0].length))
    assert main([*argv, "--no-progress"]) == 0
    assert "cached" in capsys.readouterr().out
