"""The log-mel front end (alignment, batch and window invariance), mel statistics and the mel BEST-RQ teacher."""

import math

import numpy as np
import pytest
import torch
import torchaudio

from mert.data import shards as S
from mert.teachers.base import TeacherError, student_frames
from mert.teachers.bestrq import BestRQTeacher, musicfm_quantizer
from mert.teachers.label_run import label_array
from mert.teachers.mel import MelFrontEnd, MelSpec, MelStats, compute_mel_stats, corpus_mel_stats
from mert.teachers.usage import code_usage
from tests.teachers.conftest import make_corpus, notes

SR = 24_000


def wav(seconds: float, seed: int = 0) -> np.ndarray:
    return notes(round(seconds * SR), np.random.default_rng(seed))


def stats() -> MelStats:
    return MelStats(MelSpec().as_dict(), -20.0, 30.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("melc")
    make_corpus(root, [2.0, 3.0, 1.5, 2.5], music=True)
    return S.Corpus(root)


def test_spec_centres_tokens_on_student_frames():
    spec = MelSpec()
    assert (spec.hop, spec.offset, spec.dim) == (80, 1, 512)
    # token i stacks mel frames 4i+1 .. 4i+4, centred at 320 i + {80, 160, 240, 320}: mean 320 i + 200,
    # the centre of student frame i = samples [320 i, 320 i + 400)
    assert spec.hop * (spec.offset + (spec.stack - 1) / 2) == 200
    assert MelSpec(stack=20).hop * (MelSpec(stack=20).offset + 19 / 2) == 200
    with pytest.raises(ValueError, match="divide"):
        MelSpec(stack=3)


def test_rows_equal_torchaudio_on_the_row_alone():
    x = torch.from_numpy(np.stack([wav(2.0, 0), np.pad(wav(1.3, 1), (0, SR * 2 - round(1.3 * SR)))]))
    lengths = torch.tensor([2 * SR, round(1.3 * SR)])
    mel = MelFrontEnd().log_mel(x, lengths)
    ref = torchaudio.transforms.MelSpectrogram(SR, 2048, hop_length=80, n_mels=128)  # center=True, reflect
    for b in range(2):
        want = torchaudio.transforms.AmplitudeToDB()(ref(x[b, : lengths[b]]))  # (128, n // 80 + 1)
        torch.testing.assert_close(mel[b, :, : want.shape[-1]], want, atol=1e-4, rtol=0)


def test_tokens_stack_the_centred_mel_frames():
    x = torch.from_numpy(wav(1.0))[None]
    n = torch.tensor([SR])
    front = MelFrontEnd()
    mel = front.log_mel(x, n)[0]  # (128, T)
    tok = front(x, n)[0]  # (F, 512)
    for i in (0, 7, student_frames(SR) - 1):
        want = torch.cat([mel[:, 4 * i + 1 + s] for s in range(4)])  # MusicFM's "(s f)" order
        torch.testing.assert_close(tok[i], want)


@pytest.mark.parametrize("seconds, frames", [(3.0, 224), (5.0, 374), (5.12, 383)])
@pytest.mark.parametrize("K, C", [(1, 4096), (3, 64)])
def test_bestrq_labels_have_the_student_frame_count(seconds, frames, K, C):
    t = BestRQTeacher(MelSpec(), stats(), K, C)
    x = wav(seconds)
    codes = t.encode(torch.from_numpy(x)[None], torch.tensor([x.shape[0]]))
    assert codes.shape[:2] == (1, K) and codes.shape[2] >= frames == student_frames(x.shape[0])
    assert int(codes.max()) < C and codes.dtype == torch.int64
    assert label_array(t, x).shape == (K, frames)


def test_bestrq_windowed_and_batched_labels_equal_whole_clip_labels():
    t = BestRQTeacher(MelSpec(), stats(), 2, 256, chunk_frames=40)  # context covers the 2048-sample window
    x = wav(3.3, seed=3)
    n = student_frames(x.shape[0])
    whole = t.encode(torch.from_numpy(x)[None], torch.tensor([x.shape[0]]))[0, :, :n].numpy()
    np.testing.assert_array_equal(label_array(t, x, batch_size=3), whole)
    assert len(np.unique(whole[0])) > 5


def test_bestrq_nearest_code_matches_a_brute_force_oracle():
    t = BestRQTeacher(MelSpec(), stats(), 2, 512)
    x = torch.from_numpy(wav(2.0, seed=5))[None]
    n = torch.tensor([x.shape[1]])
    codes = t.encode(x, n)[0]  # (K, F)
    z = torch.einsum("fd,kde->kfe", t.tokens(x, n)[0].double(), t.projections.double())  # (K, F, 16)
    checked = 0
    for k in range(2):
        zn = z[k] / z[k].norm(dim=-1, keepdim=True)
        cb = t.codebooks[k].double()
        for f in range(0, z.shape[1], 3):
            d = ((zn[f][None] - cb) ** 2).sum(-1)  # L2 distance to every normalised code, float64
            best, second = d.topk(2, largest=False).values
            if second - best > 1e-6:  # a float32 near-tie may legitimately go either way
                assert int(codes[k, f]) == int(d.argmin())
                checked += 1
    assert checked > 0.95 * 2 * len(range(0, z.shape[1], 3))


def test_bestrq_buffers_follow_musicfm_and_are_deterministic():
    a = BestRQTeacher(MelSpec(), stats(), 2, 4096)
    b = BestRQTeacher(MelSpec(), stats(), 2, 4096)
    assert a.identity() == b.identity() and a.key.startswith("bestrq-")
    proj, cb = musicfm_quantizer(512, 16, 4096, 142)
    torch.testing.assert_close(a.projections[0], proj)
    torch.testing.assert_close(a.codebooks[0], cb / cb.norm(dim=-1, keepdim=True))
    assert abs(float(proj.std()) - math.sqrt(2 / (512 + 16))) < 0.01  # Xavier normal
    assert abs(float(cb.std()) - 1.0) < 0.02  # N(0, 1)
    assert not torch.equal(a.projections[0], a.projections[1])  # independent codebooks: seeds 142, 143
    x = torch.from_numpy(wav(2.0))[None]
    assert torch.equal(a.encode(x, torch.tensor([x.shape[1]])), b.encode(x, torch.tensor([x.shape[1]])))
    other = BestRQTeacher(MelSpec(), MelStats(MelSpec().as_dict(), -20.0, 31.0), 2, 4096)
    assert other.key != a.key  # the statistics version the labels


def test_mel_stats_compute_save_load_and_reuse(corpus, tmp_path, monkeypatch):
    st = compute_mel_stats(corpus, MelSpec(), fit_frames=100_000)
    mel = [
        MelFrontEnd().log_mel(torch.from_numpy(np.array(corpus.audio(c)))[None], torch.tensor([c.length]))
        for c in corpus
    ]
    all_db = torch.cat([m.flatten() for m in mel]).double()
    assert st.mean == pytest.approx(float(all_db.mean()), abs=0.05)  # the fit windows drop clip tails < 320
    assert st.std == pytest.approx(float(all_db.std()), abs=0.05)
    path = st.save(tmp_path / "s")
    assert MelStats.load(path).hash == st.hash == MelStats.load(tmp_path / "s").hash
    got = corpus_mel_stats(MelSpec(), None, 100_000, corpus.root, tmp_path / "labels")
    assert got.hash == st.hash and len(list((tmp_path / "labels" / "mel-stats").glob("*.json"))) == 1
    monkeypatch.setattr("mert.teachers.mel.compute_mel_stats", lambda *a, **k: pytest.fail("recomputed"))
    assert corpus_mel_stats(MelSpec(), None, 100_000, corpus.root, tmp_path / "labels").hash == st.hash
    path.write_text(path.read_text().replace(str(st.std), str(st.std + 1)))
    with pytest.raises(TeacherError, match="hash"):
        MelStats.load(path)
    with pytest.raises(TeacherError, match="computed with"):
        BestRQTeacher(MelSpec(n_mels=64), st)


def test_per_bin_norm_standardises_each_bin_and_spreads_the_codes(corpus):
    st = compute_mel_stats(corpus, MelSpec(), fit_frames=100_000)
    mean, std = st.vectors("per_bin")
    assert mean.shape == std.shape == (512,) and torch.equal(mean[:128], mean[128:256])  # tokens are "(s f)"
    assert torch.equal(st.vectors("global")[0], torch.full((512,), st.mean))
    g = BestRQTeacher(MelSpec(), st, 1, 1024)
    b = BestRQTeacher(MelSpec(), st, 1, 1024, norm="per_bin")
    assert g.key != b.key and b.identity()["config"]["norm"] == "per_bin"
    tokens, codes = [], {"g": [], "b": []}
    for clip in corpus:
        x, n = torch.from_numpy(np.array(corpus.audio(clip)))[None], torch.tensor([clip.length])
        tokens.append(b.tokens(x, n)[0, : student_frames(clip.length)])
        codes["g"].append(g.encode(x, n)[0, :, : student_frames(clip.length)].numpy())
        codes["b"].append(b.encode(x, n)[0, :, : student_frames(clip.length)].numpy())
    t = torch.cat(tokens)[:, :128]  # (N, n_mels): the first frame of every token
    live = torch.tensor(st.bin_std) > 1.0
    assert t.mean(0)[live].abs().max() < 0.1 and (t.std(0)[live] - 1).abs().max() < 0.1
    used = {k: code_usage(v, 1024)[0] for k, v in codes.items()}
    assert used["b"].entropy_bits > used["g"].entropy_bits, used
    with pytest.raises(TeacherError, match="per-bin"):
        MelStats(MelSpec().as_dict(), -20.0, 30.0).vectors("per_bin")
