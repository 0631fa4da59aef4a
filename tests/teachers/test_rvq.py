"""EnCodec RVQ teacher: random-projection (seeded) weights only, no downloads."""

import urllib.error

import numpy as np
import pytest
import torch

from mert.data import shards as S
from mert.teachers import rvq
from mert.teachers.base import TeacherError, student_frames
from mert.teachers.label_run import label_array, label_corpus
from mert.teachers.labels import LabelStore
from tests.conftest import noise, sine
from tests.teachers.conftest import make_corpus


def signal(seconds: float) -> np.ndarray:
    return sine(seconds, freq=330.0, amp=0.3) + noise(seconds, amp=0.1)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal codes. Not 1.0 by construction: the random-projection codes are argmaxes over
    1024 directions of (x - mu) where x ~ mu, so float32 differences between batch shapes (or the
    LSTM's warm-up in a chunk) flip rare near-ties (measured here: 0 to 1 code in ~400)."""
    assert a.shape == b.shape
    return float((a == b).mean())


def test_codes_shape_range_and_not_degenerate(rvq_teacher):
    x = torch.from_numpy(signal(5.0))[None]
    codes = rvq_teacher.encode(x)
    assert codes.shape == (1, 8, 375) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 1024
    # random-init EnCodec has all-zero codebooks (one code for every frame); ours must spread
    assert all(len(torch.unique(codes[0, k])) > 20 for k in range(8))


def test_identity_names_the_random_projection_teacher(rvq_teacher):
    ident = rvq_teacher.identity()
    assert ident["name"] == "rvq-random-projection" == rvq_teacher.name
    assert ident["config"]["weights"] == "random" and ident["config"]["seed"] == 0
    assert ident["config"]["bandwidth"] == 6.0 and ident["config"]["n_codebooks"] == 8
    assert len(ident["weights_sha256"]) == 64 and rvq_teacher.key == f"rvq-random-projection-{ident['hash'][:12]}"
    assert not rvq_teacher.training and not any(p.requires_grad for p in rvq_teacher.parameters())
    rvq_teacher.train()
    assert not rvq_teacher.training


def test_random_projection_quantizer_is_seeded_and_uses_every_codebook():
    np.testing.assert_array_equal(rvq.calibration_signal(1.0, seed=3), rvq.calibration_signal(1.0, seed=3))
    mu = torch.linspace(-1, 1, 16)
    a, b, c = (rvq.RandomProjectionQuantizer(mu, 3, 32, seed) for seed in (0, 0, 1))
    assert torch.equal(a.codebooks, b.codebooks) and not torch.equal(a.codebooks, c.codebooks)
    emb = mu[None, :, None] + torch.randn(2, 16, 500)  # (B, D, F)
    codes = a(emb)
    assert codes.shape == (2, 3, 500) and int(codes.max()) < 32
    assert all(len(torch.unique(codes[:, k])) == 32 for k in range(3))  # 1000 frames hit all 32 codes
    assert torch.equal(a(emb * 3 - mu[None, :, None] * 2), codes)  # depends on the direction of x - mu only


def test_right_padding_in_a_batch_does_not_change_kept_frames(rvq_teacher):
    xs = [signal(0.5), signal(1.2)]
    batch = torch.zeros(2, xs[1].shape[0])
    batch[0, : xs[0].shape[0]] = torch.from_numpy(xs[0])
    batch[1] = torch.from_numpy(xs[1])
    codes = rvq_teacher.encode(batch)
    for i, x in enumerate(xs):
        n = student_frames(x.shape[0])
        alone = rvq_teacher.encode(torch.from_numpy(x)[None])[0, :, :n]
        assert agreement(codes[i, :, :n].numpy(), alone.numpy()) >= 0.99


def test_chunked_equals_unchunked(rvq_teacher, monkeypatch):
    """1 s chunks with 1 s of left context vs one pass over 4 s: the causal LSTM state is the only difference."""
    x = signal(4.0)
    n = student_frames(x.shape[0])
    full = rvq_teacher.encode(torch.from_numpy(x)[None])[0, :, :n].numpy()
    monkeypatch.setattr(rvq_teacher, "chunk_frames", 75)
    chunked = label_array(rvq_teacher, x, batch_size=3)
    assert agreement(chunked, full) >= 0.99


def test_checkpoint_weights_round_trip(rvq_teacher, tmp_path):
    path = tmp_path / "encodec.th"
    torch.save(rvq_teacher.model.state_dict(), path)
    model, source = rvq.load_encodec(str(path))
    assert source == "checkpoint"
    assert rvq.module_sha256(model) == rvq.module_sha256(rvq_teacher.model)
    t = rvq.EncodecTeacher(model, source)
    assert t.name == "rvq-encodec24k-checkpoint" and t.identity()["config"]["weights"] == "checkpoint"
    assert t.key != rvq_teacher.key and "seed" not in t.identity()["config"]


def test_missing_checkpoint_and_unavailable_pretrained_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(TeacherError, match="not found"):
        rvq.load_encodec(str(tmp_path / "nope.th"))
    (tmp_path / "bad.th").write_bytes(b"junk")
    with pytest.raises(TeacherError, match="cannot load"):
        rvq.load_encodec(str(tmp_path / "bad.th"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(TeacherError, match="local checkpoint path.*random") as e:
        rvq.load_encodec("pretrained")
    assert "not in the torch hub cache" in str(e.value)


def test_label_corpus_with_encodec_then_cache_hit(rvq_teacher, tmp_path, monkeypatch):
    make_corpus(tmp_path / "c", [0.6, 0.4, 0.7])
    calls = []
    encode = rvq_teacher.encode
    monkeypatch.setattr(rvq_teacher, "encode", lambda w, n=None: calls.append(w.shape) or encode(w, n))
    s = label_corpus(tmp_path / "c", tmp_path / "l", rvq_teacher, batch_size=2, device="cpu", progress=False)
    assert (s.computed, len(calls)) == (3, 2)
    store = LabelStore.open(tmp_path / "l", "rvq")
    assert store.identity["name"] == "rvq-random-projection"
    for clip in S.Corpus(tmp_path / "c"):
        x = torch.from_numpy(S.Corpus(tmp_path / "c").audio(clip))[None]
        n = student_frames(clip.length)
        assert agreement(store.load(clip), encode(x)[0, :, :n].numpy()) >= 0.99
    calls.clear()
    s = label_corpus(tmp_path / "c", tmp_path / "l", rvq_teacher, device="cpu", progress=False)
    assert (s.computed, s.cached, len(calls)) == (0, 3, 0)
