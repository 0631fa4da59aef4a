"""Label statistics, the collapse detector, the curves plot and their wiring into the trainer and its loggers."""

import json
import math

import numpy as np
import pytest
import torch

from mert.data.shards import Corpus
from mert.model.heads import label_losses
from mert.tracking import DiskLogger, MLflowLogger, MultiLogger, read_jsonl
from mert.train import checkpoint as ckpt
from mert.train.diagnostics import (
    COLLAPSE_TAG,
    PLOT_FILE,
    USAGE_FILE,
    CollapseDetector,
    LabelStats,
    plot_curves,
    transition_stats,
)
from mert.train.distributed import DistInfo
from mert.train.labels import HashLabels
from mert.train.trainer import Trainer
from tests.train.conftest import tiny_profile


def stats_of(*codes):
    return LabelStats(np.stack([np.bincount(np.asarray(c), minlength=4) for c in codes]), clips=1)


def test_label_stats_majority_entropy_and_floor():
    s = stats_of([0, 0, 0, 1], [2, 3, 2, 3])
    assert s.majority == [0.75, 0.5]
    assert [u.top_code for u in s.usage] == [0, 2]
    h0 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert s.summary()["labels/entropy_bits_0"] == pytest.approx(h0)
    assert s.unigram_ce == pytest.approx([h0 * math.log(2), math.log(2)])
    assert s.summary()["labels/unigram_ce"] == pytest.approx(h0 * math.log(2) + math.log(2))
    assert s.params()["majority_1"] == 0.5 and s.params()["top_code_0"] == 0


def test_frame_terms_equal_what_a_majority_predictor_scores():
    """A head that always ranks the training-majority code first scores exactly the frame-matched majority rate."""
    s = stats_of([0, 0, 0, 1, 2], [3, 3, 1, 2, 0])
    targets = torch.tensor([[0, 3], [1, 3], [2, 2], [0, 0], [3, 1], [0, 3]])  # (N, K)
    logits = torch.zeros(2, len(targets), 4)  # (K, N, C)
    logits[0, :, 0], logits[1, :, 3] = 5.0, 5.0
    _, acc = label_losses(logits, targets)
    terms = s.frame_terms(targets)
    assert acc.tolist() == pytest.approx([terms["majority_0"].item(), terms["majority_1"].item()])
    assert terms["majority_0"].item() == pytest.approx(3 / 6)
    # the unigram CE is the CE of the smoothed training frequencies as logits
    p = (np.bincount([0, 0, 0, 1, 2], minlength=4) + 0.5) / 7.0
    ce, _ = label_losses(torch.from_numpy(np.log(p)).float()[None, None].expand(1, 6, 4), targets[:, :1])
    assert terms["unigram_ce_0"].item() == pytest.approx(ce.item(), rel=1e-5)


def test_label_stats_from_a_label_source_count_whole_clips(corpus_dir):
    corpus = Corpus(corpus_dir)
    lab = HashLabels(2, 16)
    s = LabelStats.from_labels(lab, corpus.clips)
    frames = sum(lab.crop(c, 0, c.length).shape[1] for c in corpus.clips)
    assert s.clips == len(corpus.clips) and s.hist.shape == (2, 16) and s.hist.sum(1).tolist() == [frames] * 2
    assert LabelStats.from_labels(lab, corpus.clips, max_clips=3).clips == 3
    with pytest.raises(ValueError, match="no clips"):
        LabelStats.from_labels(lab, [])


def test_collapse_detector_warns_once_after_n_and_records_recovery():
    d = CollapseDetector(patience=3, band=0.01)
    assert [d.update([0.0, 0.005]) for _ in range(2)] == [None, None]
    assert d.update([-0.01, 0.0]) == "collapsed" and d.warned
    assert d.update([0.0, 0.0]) is None  # warned once
    assert d.update([0.0, 0.02]) == "recovered" and not d.warned  # one codebook left the band
    assert d.update([0.0, 0.0]) is None and d.streak == 1
    d2 = CollapseDetector(patience=2)
    d2.update([0.0])
    assert d2.update([0.5]) is None and d2.streak == 0  # a streak is broken by one good validation
    d3 = CollapseDetector(3)
    d3.load_state_dict(d.state_dict())
    assert (d3.streak, d3.warned) == (1, False)


def test_transition_stats_separate_persistent_from_memoryless_codes():
    rng = np.random.default_rng(0)
    runs = [np.repeat(rng.integers(0, 64, 100), 5) for _ in range(4)]  # each code held for 5 frames
    iid = [rng.integers(0, 64, 500) for _ in range(4)]
    persistent = transition_stats(runs[:2], runs[2:], 64, lag=1)
    memoryless = transition_stats(iid[:2], iid[2:], 64, lag=1)
    assert persistent["same_rate"] == pytest.approx(0.8, abs=0.03)
    assert persistent["unigram_ce"] - persistent["bigram_ce"] > 1.5
    assert persistent["bigram_acc"] - persistent["majority_acc"] > 0.5
    assert memoryless["same_rate"] < 0.05 and memoryless["bigram_ce"] >= memoryless["unigram_ce"] - 0.05
    assert memoryless["bigram_acc"] - memoryless["majority_acc"] < 0.03
    with pytest.raises(ValueError, match="lag"):
        transition_stats(runs, runs, 64, lag=0)


def test_plot_curves_writes_a_png(tmp_path):
    rows = [
        {"step": s, "val/acc/rvq_0": a, "val/majority_0": 0.2, "val/loss/rvq_ce_0": ce, "val/unigram_ce_0": 5.0}
        for s, a, ce in [(10, 0.2, 6.0), (20, 0.2, 5.5), (30, 0.3, 4.8)]
    ]
    path = plot_curves(rows, "rvq", 1, tmp_path / "c.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- in the trainer
class TagLogger:
    """A logger with tags and artifacts, as the run loggers have."""

    def __init__(self):
        self.rows, self.config, self.tags, self.artifacts = [], None, {}, []

    def log_dict(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def log_config(self, config):
        self.config = config

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(path)

    def close(self, status="FINISHED"):
        pass


def trainer(corpus_dir, out, logger, **kw):
    prof = tiny_profile(**{"val_interval": 1, "max_steps": 3, "save_interval": 1, **kw})
    return Trainer(prof, Corpus(corpus_dir), HashLabels(8, 64), out, DistInfo(), logger).setup()


def test_trainer_logs_label_stats_margins_collapse_tag_and_plot(corpus_dir, tmp_path):
    logger = TagLogger()
    t = trainer(corpus_dir, tmp_path, logger, collapse_patience=2, collapse_band=1.0)  # band 1: always "collapsed"
    res = t.fit()
    usage = json.loads((tmp_path / USAGE_FILE).read_text())
    assert len(usage["codebooks"]) == 8 and usage["clips_counted"] == len(t.loader.sampler.clips)
    step0 = dict(logger.rows[0][1])
    assert logger.rows[0][0] == 0 and {"labels/majority_0", "labels/unigram_ce", "labels/entropy_bits_7"} <= set(step0)
    assert logger.config["labels"]["majority_0"] == pytest.approx(usage["codebooks"][0]["top_share"], abs=1e-4)
    vals = [(s, m) for s, m in logger.rows if "val/loss/total" in m]
    assert [s for s, _ in vals] == [1, 2, 3]
    for k in range(8):
        m = vals[0][1]
        assert m[f"val/acc_margin_{k}"] == pytest.approx(m[f"val/acc/rvq_{k}"] - m[f"val/majority_{k}"])
        assert 0 < m[f"val/unigram_ce_{k}"] <= math.log(64) + 0.5
    assert [m["val/collapsed"] for _, m in vals] == [0.0, 1.0, 1.0]  # patience 2
    assert logger.tags[COLLAPSE_TAG] == "true" and logger.tags["collapse.since_step"] == 2
    train = [m for _, m in logger.rows if "optim/lr" in m]
    assert "train/acc_margin_0" in train[0] and "train/majority_0" in train[0]
    assert (tmp_path / PLOT_FILE).exists() and logger.artifacts[-1] == tmp_path / PLOT_FILE
    assert res["val"]["val/collapsed"] == 1.0


def test_collapse_warning_is_logged(corpus_dir, tmp_path, caplog):
    t = trainer(corpus_dir, tmp_path, TagLogger(), max_steps=2, collapse_patience=1, collapse_band=1.0)
    t.fit()
    assert "predicts code frequencies only" in caplog.text


def test_detector_state_survives_a_checkpoint(corpus_dir, tmp_path):
    t = trainer(corpus_dir, tmp_path, TagLogger(), collapse_patience=5, collapse_band=1.0)
    t.fit()  # validations at steps 1, 2 in the loop, then the final one after the step-3 checkpoint
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "checkpoints"))
    assert state["train_state"]["diagnostics"]["detector"]["streak"] == 2
    t2 = trainer(corpus_dir, tmp_path, TagLogger(), collapse_patience=5, collapse_band=1.0)
    assert t2.diagnostics.detector.streak == 2 and [r["step"] for r in t2.diagnostics.history] == [1.0, 2.0]


def test_disk_logger_tags_and_mlflow_run_gets_tag_params_metrics_and_plot(corpus_dir, tmp_path, mlflow_uri):
    ml = MLflowLogger(mlflow_uri, "exp", system_metrics=False)
    disk = DiskLogger(tmp_path / "metrics.jsonl")
    t = trainer(corpus_dir, tmp_path, MultiLogger(ml, disk), max_steps=2, collapse_patience=2, collapse_band=1.0)
    t.fit()
    t.close()
    run = ml.client.get_run(ml.run_id)
    assert run.data.tags[COLLAPSE_TAG] == "true" and "collapse.message" in run.data.tags
    assert "labels.majority_0" in run.data.params and "labels.unigram_ce_7" in run.data.params
    assert "val/acc_margin_0" in run.data.metrics and "labels/majority_0" in run.data.metrics
    assert PLOT_FILE in [a.path for a in ml.client.list_artifacts(ml.run_id)]
    assert json.loads((tmp_path / "tags.json").read_text())[COLLAPSE_TAG] == "true"
    assert any("val/acc_margin_3" in row for row in read_jsonl(tmp_path / "metrics.jsonl"))


def test_validation_on_held_out_clips(corpus_dir, tmp_path):
    t = trainer(corpus_dir, tmp_path, TagLogger(), max_steps=1, val_holdout_clips=2)
    train_ids = {c.id for c in t.loader.sampler.clips}
    val_ids = {c.id for c in t.val_loader.sampler.clips}
    assert len(val_ids) == 2 and not train_ids & val_ids
    assert t.diagnostics.stats.clips == len(train_ids)  # the majority rate comes from the training labels
    assert 0.0 <= t.validate()["val/majority_0"] <= 1.0
