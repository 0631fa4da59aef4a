"""End to end: `mert label --teacher bestrq|melrvq` -> a store the trainer reads; code usage; `mert teacher fit`."""

import json

import numpy as np
import pytest

from mert.cli import main
from mert.data import shards as S
from mert.teachers.base import student_frames
from mert.teachers.commands import print_summary
from mert.teachers.label_run import label_corpus
from mert.teachers.labels import USAGE_FILE, LabelStore, UntrainableLabels
from mert.teachers.melrvq import MODEL_FILE
from mert.train.distributed import DistInfo
from mert.train.labels import open_labels
from mert.train.trainer import Trainer
from tests.teachers.conftest import EnergyTeacher, make_corpus
from tests.train.conftest import tiny_profile

MELRVQ = (
    "  melrvq:\n    n_codebooks: 2\n    codebook_size: 32\n    codebook_dim: 8\n    steps: 30\n    batch_frames: 256\n"
)
BESTRQ = "  bestrq:\n    n_codebooks: 2\n    codebook_size: 64\n"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "corpus"
    make_corpus(root, [2.0, 1.5, 2.5, 1.2], music=True)
    return root


def params(tmp_path, teacher: str, bestrq: str = "", melrvq: str = "", name: str = "params.yaml") -> str:
    """A params file with tiny bestrq / melrvq sections plus ``bestrq`` / ``melrvq`` extra lines."""
    path = tmp_path / name
    path.write_text(f"label:\n  teacher: {teacher}\n  device: cpu\n{BESTRQ}{bestrq}{MELRVQ}{melrvq}")
    return str(path)


def label(corpus_dir, labels, p, *extra) -> int:
    return main(["label", str(corpus_dir), str(labels), "--params", p, "--no-progress", *extra])


class ListLogger:
    def __init__(self):
        self.rows = []

    def log_dict(self, metrics, step):
        self.rows.append(dict(metrics))

    def log_config(self, config):
        pass

    def close(self, status="FINISHED"):
        pass


def train_two_steps(corpus_dir, labels_dir, tmp_path) -> dict:
    corpus = S.Corpus(corpus_dir)
    logger = ListLogger()
    t = Trainer(
        tiny_profile(max_steps=2), corpus, open_labels(labels_dir, corpus), tmp_path / "run", DistInfo(), logger
    )
    res = t.setup().fit()
    t.close()
    assert res["step"] == 2
    return {k: v for row in logger.rows for k, v in row.items()} | {"objective": t.objective}


@pytest.mark.parametrize("teacher, K, C", [("bestrq", 2, 64), ("melrvq", 2, 32)])
def test_label_writes_a_store_the_trainer_reads(teacher, K, C, corpus_dir, tmp_path, capsys, monkeypatch):
    p = params(tmp_path, "rvq")  # --teacher overrides label.teacher
    assert label(corpus_dir, tmp_path / "labels", p, "--teacher", teacher, "--metrics", str(tmp_path / "m.json")) == 0
    out = capsys.readouterr().out
    assert "code usage" in out and "entropy bits" in out and "top share" in out
    store = LabelStore.open(tmp_path / "labels", teacher)
    corpus = S.Corpus(corpus_dir)
    for clip in corpus:
        codes = store.load(clip)
        assert codes.shape == (K, student_frames(clip.length)) and codes.max() < C
    usage = json.loads((store.root / USAGE_FILE).read_text())
    assert usage["clips"] == 4 and set(usage["codebooks"]) == {str(k) for k in range(K)}
    assert usage["frames"] == sum(store.load(c).shape[1] for c in corpus)
    assert 1 < usage["codebooks"]["0"]["distinct"] <= C
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["usage"] == usage and metrics["computed"] == 4
    if teacher == "melrvq":  # fitted on demand, then reused
        assert len(list((tmp_path / "labels" / "melrvq-models").glob(f"*/{MODEL_FILE}"))) == 1
        monkeypatch.setattr("mert.teachers.melrvq.fit_melrvq", lambda *a, **k: pytest.fail("refitted"))
        assert label(corpus_dir, tmp_path / "labels", params(tmp_path, teacher)) == 0
        assert "cached" in capsys.readouterr().out
    m = train_two_steps(corpus_dir, store.root, tmp_path)
    o = m["objective"]
    assert (o.teacher, o.n_codebooks, o.codebook_size) == (teacher, K, C)
    assert {f"train/acc/{teacher}_{k}" for k in range(K)} <= set(m) and f"train/loss/{teacher}_ce" in m
    assert np.isfinite(m["train/loss/total"])


class ConstTeacher(EnergyTeacher):
    """The energy teacher with codebook 1 stuck on one code."""

    name = "const-test"

    def encode(self, wav, lengths):
        codes = super().encode(wav, lengths)
        codes[:, 1] = 5
        return codes


def test_single_code_codebook_is_refused_unless_allowed(tmp_path, capsys, caplog):
    make_corpus(tmp_path / "c", [1.0, 1.5])
    with pytest.raises(UntrainableLabels) as e:
        label_corpus(tmp_path / "c", tmp_path / "l", ConstTeacher(), device="cpu", progress=False)
    msg = str(e.value)
    assert "mert label refuses label store const-test" in msg and "codebook 1 uses a single code (code 5 on all" in msg
    assert "1 of 64 codes used" in msg and "--allow-single-code" in msg and "codebook 0" not in msg
    s = e.value.summary  # the labels are written (cached): accepting the store relabels nothing
    assert s.usage["codebooks"]["1"]["distinct"] == 1 and s.usage["codebooks"]["1"]["top_share"] == 1.0
    assert s.usage["codebooks"]["0"]["distinct"] > 1 and not s.usage["single_code_allowed"]
    t = ConstTeacher()
    s = label_corpus(tmp_path / "c", tmp_path / "l", t, device="cpu", progress=False, allow_single_code=True)
    assert t.calls == 0 and s.usage["single_code_allowed"]
    assert "ACCEPTED WITH --ALLOW-SINGLE-CODE" in caplog.text and "codebook 1 uses a single code" in caplog.text
    print_summary(s)
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "WARNING (accepted with --allow-single-code): codebook 1 of const-test" in out
    assert "codebook 0 of" not in out


def test_teacher_fit_cli_then_label_with_the_fitted_model(corpus_dir, tmp_path, capsys, monkeypatch):
    p = params(tmp_path, "melrvq")
    assert main(["teacher", "fit", str(corpus_dir), str(tmp_path / "rvq"), "--params", p, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reconstruction L1" in out and "code usage" in out and "label.melrvq.model" in out
    info = json.loads((tmp_path / "rvq" / MODEL_FILE).read_text())["fit"]
    assert info["recon_l1_final"] < info["recon_l1_initial"] and len(info["usage"]) == 2
    monkeypatch.setattr("mert.teachers.melrvq.fit_melrvq", lambda *a, **k: pytest.fail("refitted"))
    p2 = params(tmp_path, "melrvq", melrvq=f"    model: {tmp_path / 'rvq'}\n", name="p2.yaml")
    assert label(corpus_dir, tmp_path / "labels", p2, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["computed"] == 4 and summary["teacher"].startswith("melrvq-")
    # a second fit into the same directory reuses the model; other settings are refused
    assert main(["teacher", "fit", str(corpus_dir), str(tmp_path / "rvq"), "--params", p, "--json"]) == 0
    hash_ = json.loads((tmp_path / "rvq" / MODEL_FILE).read_text())["hash"]
    assert json.loads(capsys.readouterr().out)["hash"] == hash_
    p3 = params(tmp_path, "melrvq", melrvq="    seed: 1\n", name="p3.yaml")
    assert main(["teacher", "fit", str(corpus_dir), str(tmp_path / "rvq"), "--params", p3]) == 1
    assert "fitted with other settings" in capsys.readouterr().err


def test_teacher_fit_bestrq_stats_then_label_with_them(corpus_dir, tmp_path, capsys):
    p = params(tmp_path, "bestrq")
    assert main(["teacher", "fit", str(corpus_dir), str(tmp_path / "st"), "--teacher", "bestrq", "--params", p]) == 0
    assert "label.bestrq.stats" in capsys.readouterr().out
    p2 = params(tmp_path, "bestrq", bestrq=f"    stats: {tmp_path / 'st' / 'mel-stats.json'}\n", name="p2.yaml")
    assert label(corpus_dir, tmp_path / "labels", p2) == 0
    assert not (tmp_path / "labels" / "mel-stats").exists()  # the given statistics, none computed
    assert LabelStore.open(tmp_path / "labels", "bestrq").identity["config"]["n_codebooks"] == 2


def test_teacher_fit_cqt_prints_log_scale_overrides(corpus_dir, tmp_path, capsys):
    assert main(["teacher", "fit", str(corpus_dir), str(tmp_path / "cq"), "--teacher", "cqt", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["cqt_log_gain"] == 100.0 and stats["cqt_log_std"] > 0 and stats["frames"] > 0
    assert json.loads((tmp_path / "cq" / "cqt-stats.json").read_text()) == {
        k: v for k, v in stats.items() if k not in ("teacher", "stats")
    }
