"""The hidden-state teacher (HuBERT iteration 2): a tiny parent's layer -> k-means -> 75 Hz labels.

Oracles: the parent's own ``hidden_states[layer]`` (full pass, each clip alone), scikit-learn's ``MiniBatchKMeans``
fitted on them with fairseq's settings, and ``pairwise_distances_argmin`` for the assignment.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mert.cli import main
from mert.data import shards as S
from mert.model import MERT, MERTConfig
from mert.teachers.base import TeacherError, student_frames
from mert.teachers.build import build_teacher, hidden_features
from mert.teachers.config import HiddenParams, LabelParams
from mert.teachers.hidden import HiddenFeatures, HiddenTeacher, kmeans_settings
from mert.teachers.kmeans import KMeansModel
from mert.teachers.label_run import label_corpus, run_label
from mert.teachers.labels import LabelStore
from mert.teachers.parent import load_parent, resolve_layer
from mert.utils.io import sha256_json
from tests.teachers.conftest import SR, make_corpus
from tests.teachers.test_label_run import label_files

FIT = {"n_clusters": 8, "fit_fraction": 1.0, "n_init": 2, "max_iter": 10, "fit_threads": 1}
LENGTHS = [48_000, 32_880, 74_400, 400, 719, 24_321]  # 2 s, 1.37 s, 3.1 s, one frame, one frame + 319, odd


def params(parent: Path | str, **hidden) -> LabelParams:
    return LabelParams(teacher="hidden", device="cpu", batch_size=4, hidden=HiddenParams(model=str(parent),
                       **{**FIT, **hidden}))  # fmt: skip


def save_parent(path: Path, seed: int, **cfg) -> Path:
    """A mert-tiny encoder (2 layers, 32 dims) with weights of its own, in the released HF layout."""
    torch.manual_seed(seed)
    model = MERT(MERTConfig.from_name("mert-tiny", **cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


def states(parent: Path, wav: np.ndarray, layer: int) -> np.ndarray:
    """(T, D) ``hidden_states[layer]`` of the whole clip alone, from the full forward pass (the oracle)."""
    model = MERT.from_pretrained(parent)
    with torch.no_grad():
        return model(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states[layer][0].numpy()


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    return save_parent(tmp_path_factory.mktemp("parent") / "export", seed=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> S.Corpus:
    root = tmp_path_factory.mktemp("hidden-corpus")
    make_corpus(root, [n / SR for n in LENGTHS], per_shard=2, music=True)
    return S.Corpus(root)


@pytest.fixture(scope="module")
def labelled(corpus, parent, tmp_path_factory) -> Path:
    """The corpus labelled once by ``mert label``'s stage function (k-means fitted on the corpus, saved)."""
    out = tmp_path_factory.mktemp("hidden-labels")
    s = run_label(corpus.root, out, params(parent), progress=False)
    assert (s.computed, s.rejected) == (len(LENGTHS), 0)
    return out


def kmeans_dir(labels: Path) -> Path:
    (path,) = (labels / "hidden-models").iterdir()
    return path


def test_labels_are_the_fitted_kmeans_of_the_parents_hidden_state_at_75_hz(corpus, parent, labelled):
    """fairseq's steps, redone independently: the full pass's hidden_states[layer] of every clip, scikit-learn's
    MiniBatchKMeans with learn_kmeans.py's settings on all of them, predict: the store holds exactly that."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    store = LabelStore.open(labelled, "hidden")
    layer = store.identity["config"]["layer"]
    assert layer == 1 and store.n_codebooks == 1 and store.codebook_size == 8  # null layer: N // 2 of 2
    feats = [states(parent, corpus.audio(c), layer) for c in corpus]
    with threadpool_limits(1):
        sk = MiniBatchKMeans(8, random_state=0, **HiddenParams(**FIT).kmeans_options()).fit(np.concatenate(feats))
    np.testing.assert_array_equal(KMeansModel.load(kmeans_dir(labelled)).centroids[0], sk.cluster_centers_)
    for clip, h in zip(corpus, feats):
        codes = store.load(clip)
        assert codes.shape == (1, (clip.length - 400) // 320 + 1) == (1, student_frames(clip.length))
        np.testing.assert_array_equal(codes[0], sk.predict(h))


def test_a_long_clip_keeps_its_whole_clip_front_end_and_windows_only_attention(parent, tmp_path):
    """Clips above label.chunk_seconds: the conv front end (whole-clip GroupNorm) on the whole clip, the transformer
    in windows with context. With context covering the clip, the codes are the whole clip's exactly; with 0.4 s,
    they are those of each window's frames under the whole clip's features."""
    from sklearn.metrics import pairwise_distances_argmin

    make_corpus(tmp_path / "c", [7.3], music=True)
    corpus = S.Corpus(tmp_path / "c")
    (clip,) = corpus.clips
    wav = corpus.audio(clip)
    model = MERT.from_pretrained(parent)

    def label(context: float) -> tuple[np.ndarray, np.ndarray]:
        p = params(parent, context_seconds=context)
        p.chunk_seconds = 2.0  # 4 windows of ~137 frames
        out = tmp_path / f"l{context}"
        s = label_corpus(corpus.root, out, build_teacher(p, corpus.root, out), batch_size=2, device="cpu",
                         progress=False)  # fmt: skip
        assert s.windows == 1  # the label run hands the teacher the whole clip
        return LabelStore.open(out).load(clip)[0], KMeansModel.load(kmeans_dir(out)).centroids[0]

    codes, centroids = label(10.0)  # context > the clip: every window sees all of it
    np.testing.assert_array_equal(codes, pairwise_distances_argmin(states(parent, wav, 1), centroids))

    codes, centroids = label(0.4)  # 30 frames of context (> the positional conv's 8)
    with torch.no_grad():
        h = model.feature_projection(model(torch.from_numpy(wav)[None]).features)  # (1, T, D): whole-clip front end
        n, want = h.shape[1], []
        for k in range(4):
            a, b = k * n // 4, (k + 1) * n // 4
            s, e = max(0, a - 30), min(n, b + 30)
            want.append(model.encoder(h[:, s:e], output_layer=1)[0][0, a - s : b - s])
    np.testing.assert_array_equal(codes, pairwise_distances_argmin(torch.cat(want).numpy(), centroids))
    whole = pairwise_distances_argmin(states(parent, wav, 1), centroids)
    assert (whole == codes).mean() > 0.9  # only attention sees less than the clip


def test_rows_of_a_padded_batch_are_encoded_alone(parent):
    feats = HiddenFeatures(load_parent(str(parent)), 2)
    wav = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (3, 9000)).astype(np.float32))
    lengths = torch.tensor([9000, 5000, 9000])
    wav[1, 5000:] = 0
    batch = feats(wav, lengths)
    assert batch.shape == (3, student_frames(9000), 32)
    for i, n in enumerate(lengths.tolist()):
        alone = feats(wav[i : i + 1, :n], torch.tensor([n]))[0]
        assert torch.equal(batch[i, : student_frames(n)], alone)  # bit for bit: no padding reaches a clip
        assert not batch[i, student_frames(n) :].any()


def test_identity_holds_the_parent_weights_layer_and_kmeans_not_the_path(parent, tmp_path):
    def key(path: Path, layer: int = 1, k: int = 8, seed: int = 0) -> str:
        features = hidden_features(params(path, layer=layer))
        st = kmeans_settings(features, HiddenParams(**{**FIT, "n_clusters": k}))
        c = np.random.default_rng(seed).normal(size=(k, 32)).astype(np.float32)
        km = KMeansModel(st, [c], [np.zeros(32, np.float32)], [np.ones(32, np.float32)], {})
        return HiddenTeacher(features, km).key

    shutil.copytree(parent, tmp_path / "copy")
    base = key(parent)
    assert base.startswith("hidden-") and key(tmp_path / "copy") == base  # the same weights elsewhere: the same store
    others = [key(save_parent(tmp_path / "other", seed=2)), key(parent, layer=2), key(parent, k=6),
              key(parent, seed=1)]  # fmt: skip
    assert len({base, *others}) == 5
    features = hidden_features(params(parent))
    km = KMeansModel(kmeans_settings(features, HiddenParams(**FIT)), [np.zeros((8, 32), np.float32)],
                     [np.zeros(32, np.float32)], [np.ones(32, np.float32)], {})  # fmt: skip
    ident = HiddenTeacher(features, km).identity()
    lin = ident["lineage"]
    assert lin["parent"]["source"] == str(parent) and lin["layer"] == 1 and lin["parent"]["resolved"] == str(parent)
    assert ident["config"]["parent_weights_sha256"] == lin["parent"]["weights_sha256"]
    hashed = {k: ident[k] for k in ("name", "config", "weights_sha256", "format")}
    assert ident["hash"] == sha256_json(hashed)  # where the parent came from is recorded, not hashed


def test_layer_is_resolved_against_the_parent():
    cfg = MERTConfig.from_name("mert-tiny", num_hidden_layers=4)
    assert [resolve_layer(cfg, x) for x in (None, 0, 3, -1, -5)] == [2, 0, 3, 4, 0]
    with pytest.raises(TeacherError, match=r"layer 5 is not a hidden state of the parent \(0..4"):
        resolve_layer(cfg, 5)


def test_a_killed_run_resumes_and_writes_the_store_of_one_run(corpus, parent, labelled, tmp_path):
    """Killed after its first shard (a half-written pack and a temp file left behind): the rerun computes the rest
    and the store is byte for byte the uninterrupted run's (same key: the same parent, layer and k-means)."""
    p = params(parent, kmeans_model=str(kmeans_dir(labelled)))
    teacher = build_teacher(p)
    encode, calls = teacher.encode, []

    def killed(wav, lengths):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return encode(wav, lengths)

    teacher.encode = killed
    with pytest.raises(KeyboardInterrupt):
        label_corpus(corpus.root, tmp_path / "l", teacher, batch_size=1, device="cpu", progress=False,
                     group_seconds=1e-6)  # fmt: skip
    store = LabelStore.open(tmp_path / "l")
    assert store.key == LabelStore.open(labelled).key and sum(store.has(c) for c in corpus) == 2
    (store.root / "packs" / "shard-00002.npy").write_bytes(b"half-written")  # a kill between array and record
    (store.root / "packs" / ".tmp-shard-00001.npy.x1").write_bytes(b"partial")
    s = label_corpus(corpus.root, tmp_path / "l", build_teacher(p), batch_size=3, device="cpu", progress=False)
    assert (s.computed, s.cached) == (4, 2)
    assert label_files(tmp_path / "l") == label_files(labelled) and len(label_files(labelled)) == 6


def test_two_ranks_write_the_store_of_one(corpus, parent, labelled, tmp_path):
    p = params(parent, kmeans_model=str(kmeans_dir(labelled)))
    for rank in range(2):
        run_label(corpus.root, tmp_path / "l", p, shard_index=rank, num_shards=2, progress=False)
    assert label_files(tmp_path / "l") == label_files(labelled)


def test_teacher_fit_then_label_gives_the_store_label_fits_itself(corpus, parent, labelled, tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(json.dumps({"label": {"device": "cpu", "hidden": FIT}}))
    common = ["--teacher", "hidden", "--parent", str(parent), "--params", str(tmp_path / "params.yaml")]
    assert main(["teacher", "fit", str(corpus.root), str(tmp_path / "km"), *common, "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["hash"] == KMeansModel.load(kmeans_dir(labelled)).hash and report["layer"] == 1
    (tmp_path / "params.yaml").write_text(json.dumps({"label": {"device": "cpu", "hidden": {
        **FIT, "kmeans_model": str(tmp_path / "km")}}}))  # fmt: skip
    assert main(["label", str(corpus.root), str(tmp_path / "l"), *common, "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["store"].endswith(LabelStore.open(labelled).key)
    assert not (tmp_path / "l" / "hidden-models").exists()


def test_a_kmeans_model_of_another_parent_or_layer_is_refused(parent, labelled, tmp_path):
    other = save_parent(tmp_path / "other", seed=3)
    for p in (params(other, kmeans_model=str(kmeans_dir(labelled))), params(parent, layer=2,
              kmeans_model=str(kmeans_dir(labelled)))):  # fmt: skip
        with pytest.raises(TeacherError, match=f"k-means model {kmeans_dir(labelled)} was fitted on another parent"):
            build_teacher(p)


@pytest.mark.parametrize("damage", ["weights", "config", "checkpoint"])
def test_a_corrupt_parent_is_an_error_naming_the_file(corpus, parent, tmp_path, capsys, damage):
    bad = tmp_path / "bad"
    if damage == "checkpoint":
        bad = tmp_path / "run" / "checkpoints" / "step-00000003"
        bad.mkdir(parents=True)
        (bad / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated zip")
        file, why = bad / "checkpoint.pt", "unreadable training checkpoint"
    else:
        shutil.copytree(parent, bad)
        file = bad / ("model.safetensors" if damage == "weights" else "config.json")
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
        why = "unreadable weights file" if damage == "weights" else "not valid JSON"
    with pytest.raises(TeacherError, match=rf"label.hidden.model '{bad}'.*{file}.*{why}"):
        build_teacher(params(bad), corpus.root, tmp_path / "l")
    argv = ["label", str(corpus.root), str(tmp_path / "l"), "--teacher", "hidden", "--parent", str(bad)]
    assert main([*argv, "--params", str(tmp_path / "none.yaml")]) == 1
    assert str(file) in capsys.readouterr().err


def test_a_parent_off_the_students_frame_grid_or_missing_is_refused(tmp_path):
    odd = save_parent(tmp_path / "odd", seed=0, conv_stride=(5, 2, 2, 2, 2, 2, 1))  # 160 samples: 150 Hz
    with pytest.raises(TeacherError, match=r"not the student's \(sample rate 24000 Hz, stride 160, receptive field"):
        build_teacher(params(odd))
    with pytest.raises(TeacherError, match="label.hidden.model is null: name the trained encoder"):
        build_teacher(LabelParams(teacher="hidden"))
    with pytest.raises(TeacherError, match="not a MERT encoder"):
        build_teacher(params("mfcc"))
