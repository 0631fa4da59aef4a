import math

import pytest
import torch

from mert.data.shards import Corpus
from mert.train import checkpoint as ckpt
from mert.train.distributed import DistInfo
from mert.train.labels import HashLabels
from mert.train.optim import lr_factor
from mert.train.trainer import Trainer, TrainingDiverged
from tests.train.conftest import tiny_profile


class ListLogger:
    def __init__(self):
        self.rows, self.config, self.closed = [], None, None

    def log_dict(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def log_config(self, config):
        self.config = config

    def close(self, status="FINISHED"):
        self.closed = status


def make(corpus_dir, out, logger=None, **kw):
    return Trainer(tiny_profile(**kw), Corpus(corpus_dir), HashLabels(8, 1024), out, DistInfo(), logger).setup()


def weights(trainer):
    return {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}


def test_fit_logs_metrics_saves_and_exports(corpus_dir, tmp_path):
    logger = ListLogger()
    t = make(corpus_dir, tmp_path, logger, max_steps=4)
    res = t.fit()
    t.close()
    assert res["step"] == 4 and res["checkpoint"] == tmp_path / "checkpoints/step-00000004/checkpoint.pt"
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2, 4]  # keep_last=2
    train = [m for _, m in logger.rows if "optim/lr" in m]
    assert len(train) == 4
    keys = set(train[0])
    for k in (
        "train/loss/total",
        "train/loss/rvq_ce",
        "train/loss/cqt_mse",
        "train/loss/feature_pen",
        "optim/grad_norm",
        "optim/lr",
        "perf/audio_sec_per_sec",
        "perf/data_wait_sec",
        "perf/data_wait_share",
        "train/skipped_steps",
    ):
        assert k in keys, k
    assert {f"train/acc/rvq_{k}" for k in range(8)} <= keys
    assert "val/loss/total" in logger.rows[-1][1] and logger.config["profile"]["crop_samples"] == 9600
    assert (res["export"] / "config.json").exists() and (res["export"] / "model.safetensors").exists()
    assert logger.closed == "FINISHED"


def test_lr_schedule_warmup_then_linear_decay():
    p = tiny_profile(warmup_steps=10, max_steps=110, lr=1.0)
    assert lr_factor(0, p) == pytest.approx(0.1) and lr_factor(9, p) == pytest.approx(1.0)
    assert lr_factor(60, p) == pytest.approx(0.5) and lr_factor(110, p) == pytest.approx(0.0)


def test_checkpoint_is_self_describing_and_weights_only(corpus_dir, tmp_path):
    t = make(corpus_dir, tmp_path, max_steps=2)
    t.fit()
    state = ckpt.load_checkpoint(tmp_path / "checkpoints/step-00000002/checkpoint.pt")  # weights_only=True
    assert set(state) == {"model", "optimizer", "scheduler", "scaler", "train_state", "data", "rng", "config"}
    assert state["train_state"]["step"] == 2 and state["train_state"]["samples"] == 4
    assert state["data"]["next_step"] == 2 and set(state["rng"]) >= {"python", "numpy", "torch"}
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    assert (tmp_path / "checkpoints/step-00000002/config.json").exists()


def test_resume_in_process_is_exact(corpus_dir, tmp_path):
    full = make(corpus_dir, tmp_path / "a", max_steps=4)
    full.fit()
    first = make(corpus_dir, tmp_path / "b", max_steps=2)
    first.fit()
    resumed = make(corpus_dir, tmp_path / "b", max_steps=4)
    assert resumed.step == 2
    resumed.fit()
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_incomplete_checkpoint_dir_is_ignored(tmp_path):
    (tmp_path / "step-00000009").mkdir()
    ckpt.save_checkpoint(tmp_path, 3, {"x": torch.ones(1)}, keep_last=1)
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-00000003/checkpoint.pt"
    assert not (tmp_path / "step-00000009").exists()


def test_non_finite_steps_are_skipped_then_stop(corpus_dir, tmp_path, monkeypatch):
    t = make(corpus_dir, tmp_path, max_steps=10, max_consecutive_skips=3)
    orig = t._forward

    def poisoned(batch):
        out = orig(batch)
        if batch.step >= 2:  # from step 3 on the loss is NaN
            out.loss = out.loss * math.nan
            out.metrics["loss/total"] = out.metrics["loss/total"] * math.nan
        return out

    monkeypatch.setattr(t, "_forward", poisoned)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps.*step-00000002"):
        t.fit()
    good = ckpt.load_checkpoint(tmp_path / "checkpoints/step-00000002/checkpoint.pt")
    assert t.skipped == 3 and t.step == 5
    # The skipped steps changed nothing: the weights are still those of the last good step.
    assert all(torch.equal(good["model"][k], v.cpu()) for k, v in t.raw_model.state_dict().items())
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2]


def test_train_metrics_are_averaged_over_the_log_interval(corpus_dir, tmp_path):
    """As fairseq's train_inner: a logged train metric is the mean over the steps since the last log, not the
    single step at the boundary (one batch's accuracy swings with its share of the majority code)."""
    logger = ListLogger()
    t = make(corpus_dir, tmp_path, logger, max_steps=4, log_interval=2)
    per_step = []
    step_fn = t.train_step

    def recording(batches):
        m = step_fn(batches)
        per_step.append({k: v.item() for k, v in m.items()})
        return m

    t.train_step = recording
    t.fit()
    train = [(s, m) for s, m in logger.rows if "optim/lr" in m]
    assert [s for s, _ in train] == [2, 4]
    for (_, m), steps in zip(train, (per_step[0:2], per_step[2:4])):
        for key in ("loss/total", "acc/rvq_0", "loss/rvq_ce", "majority_0"):
            assert m[f"train/{key}"] == pytest.approx(sum(s[key] for s in steps) / 2, rel=1e-5), key
        assert m["optim/grad_norm"] == pytest.approx(sum(s["optim/grad_norm"] for s in steps) / 2, rel=1e-5)


def test_loader_processes_train_the_same_weights(corpus_dir, tmp_path):
    """``loader_workers`` only changes where batches are built: 2 loader processes (with 2 accumulated
    micro-batches per step) give the weights of the in-process loader bit for bit, and a resumed run continues."""
    ref = make(corpus_dir, tmp_path / "ref", max_steps=3, batch_seconds=1.6, loader_prefetch=0)
    ref.fit()
    part = make(corpus_dir, tmp_path / "w", max_steps=2, batch_seconds=1.6, loader_workers=2, loader_prefetch=1)
    assert part.accum == 2
    part.fit()
    resumed = make(corpus_dir, tmp_path / "w", max_steps=3, batch_seconds=1.6, loader_workers=2, loader_prefetch=1)
    assert resumed.step == 2
    resumed.fit()
    a, b = weights(ref), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_autocast_on_cpu_trains_close_to_fp32(corpus_dir, tmp_path):
    """``precision: bf16`` runs the step under CPU bf16 autocast (the CQT target stays fp32): finite, updating, and
    its losses within bf16 tolerance of the fp32 run's on the same batches."""
    fp32 = make(corpus_dir, tmp_path / "a", precision="fp32")
    bf16 = make(corpus_dir, tmp_path / "b", precision="bf16")
    assert (fp32.dtype, bf16.dtype) == (torch.float32, torch.bfloat16)
    before = weights(bf16)
    for step in range(3):
        m32 = fp32.train_step(fp32.loader.step_batches(step))
        m16 = bf16.train_step(bf16.loader.step_batches(step))
        assert m16["optim/skipped"] == 0 and torch.isfinite(m16["loss/total"])
        assert m16["loss/total"].item() == pytest.approx(m32["loss/total"].item(), rel=0.03)
        assert m16["loss/cqt_mse"].item() == pytest.approx(m32["loss/cqt_mse"].item(), rel=0.05)
    after = weights(bf16)
    assert all(v.dtype == torch.float32 for v in after.values())  # autocast: fp32 master weights
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_compile_wraps_the_encoder_in_place(corpus_dir, tmp_path):
    """``compile: true`` compiles the encoder's blocks in place: the model, its checkpoint keys and the exported
    layout are those of an eager run (no ``_orig_mod.``)."""
    t = make(corpus_dir, tmp_path, compile=True)
    enc = t.raw_model.mert
    blocks = [enc.feature_extractor, enc.feature_projection, enc.encoder.pos_conv_embed, *enc.encoder.layers]
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert t.model is t.raw_model
    eager = make(corpus_dir, tmp_path / "eager")
    assert list(t.state_dict()["model"]) == list(eager.state_dict()["model"])


@pytest.mark.slow  # torch.compile (inductor, C++ codegen) of the tiny encoder: ~20-90 s on 2 loaded cores
def test_compiled_tiny_profile_trains_like_eager(corpus_dir, tmp_path, monkeypatch):
    """The tiny profile with ``compile: true`` on CPU: the same losses as eager over a few steps (inductor's own
    dropout RNG is swapped for eager's, ``fallback_random``, so the two runs draw the same masks)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    eager = make(corpus_dir, tmp_path / "eager")
    compiled = make(corpus_dir, tmp_path / "compiled", compile=True)
    for step in range(3):
        a = eager.train_step(eager.loader.step_batches(step))
        b = compiled.train_step(compiled.loader.step_batches(step))
        for key in ("loss/total", "loss/rvq_ce", "loss/cqt_mse", "optim/grad_norm"):
            assert b[key].item() == pytest.approx(a[key].item(), rel=1e-4, abs=1e-6), (step, key)
    w_eager, w_compiled = weights(eager), weights(compiled)
    assert all(torch.allclose(w_eager[k], w_compiled[k], rtol=1e-3, atol=1e-5) for k in w_eager)


def test_progress_lines_give_the_step_rate_and_time_left(corpus_dir, tmp_path, monkeypatch, caplog):
    import mert.train.trainer as tr

    monkeypatch.setattr(tr, "PROGRESS_SECONDS", 0.0)
    caplog.set_level("INFO", logger="mert.train.trainer")
    t = make(corpus_dir, tmp_path, ListLogger(), max_steps=4, log_interval=1)
    t.fit()
    t.close()
    lines = [r.getMessage() for r in caplog.records if "left" in r.getMessage()]
    assert [ln.split(":")[0] for ln in lines] == ["step 2/4 (50%)", "step 3/4 (75%)", "step 4/4 (100%)"]
    assert all("s/step" in ln and "audio-s/s" in ln for ln in lines) and lines[-1].endswith("about 0 s left")


def test_frozen_conv_layers_keep_their_initial_weights(corpus_dir, tmp_path):
    """conv_frozen_layers: the first N conv layers get no gradient and no update; everything else trains."""
    t = make(corpus_dir, tmp_path, max_steps=2, model_overrides={"conv_frozen_layers": 2, "feature_grad_mult": 1.0})
    before = weights(t)
    t.fit()
    t.close()
    after = weights(t)
    frozen = [k for k in before if k.startswith(("mert.feature_extractor.conv_layers.0.", "mert.feature_extractor."
                                                 "conv_layers.1."))]  # fmt: skip
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["mert.feature_extractor.conv_layers.2.conv.weight"],
                           after["mert.feature_extractor.conv_layers.2.conv.weight"])  # fmt: skip
    assert all(not p.requires_grad for p in t.raw_model.mert.feature_extractor.conv_layers[1].parameters())
    with pytest.raises(Exception, match="conv_frozen_layers must be in"):
        make(corpus_dir, tmp_path / "bad", model_overrides={"conv_frozen_layers": 9})
