"""The pretraining loop: :class:`Trainer` with ``setup / fit / train_step / validate / save / load / close``.

``train_step`` is the pure step (forward, backward over the accumulated micro-batches, clip, update); ``fit``
owns the loop, logging, validation and checkpoints. Every source of randomness in a micro-batch (crop, mask,
mixture, dropout, layerdrop) is seeded from ``(seed, step, slot)``, so a run is reproducible, resumes exactly,
and N ranks compute what one process computes with N-fold gradient accumulation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mert.data.shards import Corpus
from mert.model.config import MERTConfig
from mert.model.pretraining import MERTPretrainingModel, PretrainingConfig, teacher_kind
from mert.train import checkpoint as ckpt
from mert.train.data import Batch, CropSampler, PretrainLoader, holdout_split
from mert.train.diagnostics import LabelStats, RunDiagnostics
from mert.train.distributed import DistInfo, all_reduce_mean, unwrap, wrap_model
from mert.train.labels import LabelSource
from mert.train.optim import build_optimizer, build_scheduler, lr_factor
from mert.train.params import Profile
from mert.utils.runtime import tune_allocator

log = logging.getLogger(__name__)


PROGRESS_SECONDS = 60.0
"""Seconds between two progress lines (step, rate, time left) on rank 0."""


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA devices that support it, else fp32."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def slot_seed(seed: int, step: int, slot: int) -> int:
    """A 63-bit seed for micro-batch ``slot`` of ``step``."""
    return int(np.random.SeedSequence([seed, 2, step, slot]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@functools.lru_cache(maxsize=4)
def _cqt(kind: str, device: str) -> torch.nn.Module:
    """The frozen CQT target module, built once per process (building its kernel spectra takes seconds)."""
    from mert.teachers.cqt import build_cqt

    return build_cqt(kind, device=device).eval()


class MetricWindow:
    """Sums of the train metrics since the last log, averaged at the log (as fairseq's ``train_inner``).

    Steps whose update was skipped (non-finite loss or gradient) are left out of the mean.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        if metrics["optim/skipped"].item() == 0:
            for k, v in metrics.items():
                self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
            self.n += 1

    def mean(self, last: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean over the window (``last``, the newest step's metrics, if every step of it was skipped); resets."""
        out = {k: v / self.n for k, v in self.sums.items()} if self.n else dict(last)
        out["optim/skipped"] = last["optim/skipped"]
        self.sums, self.n = {}, 0
        return out


def build_configs(p: Profile, labels: LabelSource) -> tuple[MERTConfig, PretrainingConfig]:
    """The encoder config and the objective (heads sized from the labels' K x C, metrics named after their teacher).

    Raises:
        ValueError: the labels' shape does not fit the objective (e.g. an override fixing K or C).
    """
    encoder = MERTConfig.from_name(p.model, **p.model_overrides)
    teacher = teacher_kind(labels.identity().get("name", ""))
    K, C = labels.n_codebooks, labels.codebook_size
    objective = PretrainingConfig.for_labels(p.model, teacher, K, C, **p.objective_overrides)
    if (K, C) != (objective.n_codebooks, objective.codebook_size):
        raise ValueError(
            f"labels have {K} codebooks x {C} codes but the objective {p.model!r} expects "
            f"{objective.n_codebooks} x {objective.codebook_size}"
        )
    return encoder, objective


class Trainer:
    """MERT pretraining on one rank.

    Args:
        profile: the resolved hyperparameters.
        corpus: the ingested corpus.
        labels: teacher labels for it.
        out_dir: run directory (``checkpoints/``, ``export/``, ``metrics.jsonl``).
        info: this process's rank and device.
        logger: rank-0 metric logger (``log_dict/log_config/close``), or None.
        init_state: the encoder state dict of ``profile.init_from``, already loaded and checked (default: loaded
            here when a fresh run has ``init_from``); unused when resuming from a checkpoint.
    """

    def __init__(
        self,
        profile: Profile,
        corpus: Corpus,
        labels: LabelSource,
        out_dir: str | Path,
        info: DistInfo,
        logger=None,
        init_state: dict[str, torch.Tensor] | None = None,
    ):
        self.p, self.corpus, self.labels, self.info = profile, corpus, labels, info
        self.init_state = init_state
        self.out = Path(out_dir)
        self.logger = logger if info.is_main else None
        self.step = 0  # iterations done (= data position)
        self.samples = 0  # clips consumed over all ranks
        self.skipped = 0  # non-finite steps (no update)
        self.consecutive_skips = 0
        self.model = None
        self._progress: tuple[float, int] | None = None  # (time, step) of the last progress line

    # ------------------------------------------------------------------------------------------ setup
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def setup(self) -> Trainer:
        """Build the model, CQT, optimiser, schedule, data; resume from the newest checkpoint if one exists."""
        p, dev = self.p, self.info.device
        tune_allocator()  # no page faults for the step's large temporaries (mert/utils/runtime.py)
        latest = ckpt.latest_checkpoint(self.ckpt_dir)
        torch.manual_seed(p.seed)  # identical init on every rank
        self.encoder_config, self.objective = build_configs(p, self.labels)
        self.cqt = _cqt(p.cqt, str(dev))
        self.raw_model = MERTPretrainingModel(self.encoder_config, self.objective).to(dev)
        if latest is None and p.init_from:
            self._init_encoder()  # before wrapping: DDP broadcasts / FSDP shards what is loaded here
        self.model = wrap_model(self.raw_model, self.info, p.parallel, find_unused=self.encoder_config.layerdrop > 0)
        if p.compile:
            self._compile()
        self.dtype = resolve_precision(p.precision, dev)
        self.optimizer = build_optimizer(self.raw_model, p)
        self.scheduler = build_scheduler(self.optimizer, p)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.dtype == torch.float16)
        self.accum = p.grad_accum(self.info.world_size)
        train_clips, val_clips = holdout_split(self.corpus.clips, p.val_holdout_clips, p.min_clip_samples, p.seed)
        args = (self.corpus, self.labels, p.crop_samples, p.min_clip_samples, p.micro_batch_clips, self.info.world_size)
        sampler = CropSampler(*args, self.accum, p.seed, clips=train_clips)
        self.loader = PretrainLoader(
            sampler,
            self.info.rank,
            self.info.world_size,
            p.loader_prefetch,
            workers=p.loader_workers,
            pin_memory=dev.type == "cuda",
        )
        val = CropSampler(*args, 1, p.seed + 1, clips=val_clips)  # other crops of the training clips, or held out
        self.val_loader = PretrainLoader(val, self.info.rank, self.info.world_size, prefetch=0)
        stats = LabelStats.from_labels(self.labels, sampler.clips)  # every rank: validation needs the top codes
        self.diagnostics = RunDiagnostics(
            stats,
            self.objective.teacher,
            self.out,
            p.collapse_patience,
            p.collapse_band,
            self.logger,
            self.info.is_main,
        )
        if latest is not None:
            self.load_checkpoint(latest)
        self.diagnostics.on_setup(fresh=latest is None)
        return self

    def _compile(self) -> None:
        """``torch.compile`` the encoder's blocks in place (``nn.Module.compile``: state-dict keys do not change).

        Compiled: the conv front end, the feature projection, the positional conv and each transformer layer
        (the same code and shapes for every layer, so one compiled graph serves them all; per-block compilation
        is also what FSDP2's per-layer sharding expects). Eager: the layerdrop draw between layers, the mixture,
        the mask and the heads' gather of the masked frames (RNG generators, ``.item()``, data-dependent shapes),
        which would otherwise break the graph and recompile.
        """
        enc = self.raw_model.mert
        for block in (enc.feature_extractor, enc.feature_projection, enc.encoder.pos_conv_embed, *enc.encoder.layers):
            block.compile()

    def _init_encoder(self) -> None:
        """Continued pretraining: the encoder's weights from ``init_from``; heads, optimiser, schedule stay fresh."""
        from mert.train.init_from import load_for

        state = self.init_state
        if state is None:
            state = load_for(self.p.init_from, self.encoder_config, self.p.model)
        self.raw_model.mert.load_state_dict(state, strict=True)
        self.init_state = None  # the checkpoints carry the weights from here on
        log.info("encoder initialised from %s; label heads, optimiser and LR schedule are fresh", self.p.init_from)

    # ------------------------------------------------------------------------------------------ the step
    def _forward(self, batch: Batch) -> Any:
        """Forward one micro-batch with its slot-seeded RNG: CQT of the clean audio, then mixture + masking."""
        dev = self.info.device
        seed = slot_seed(self.p.seed, batch.step, batch.slot)
        torch.manual_seed(seed)  # dropout / layerdrop: the same on any rank layout
        gen = torch.Generator(device=dev).manual_seed(seed)  # mask and mixture
        wav = batch.wav.to(dev, non_blocking=True)
        labels = batch.labels.to(dev, non_blocking=True)
        with torch.no_grad():
            cqt = self.cqt(wav)  # (B, 336, L // 320 + 1), clean audio, fp32
        with torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.model(wav, labels, cqt, generator=gen)

    def train_step(self, batches: list[Batch]) -> dict[str, torch.Tensor]:
        """One optimiser step over this rank's micro-batches; returns detached metrics (no logging, no I/O).

        A non-finite loss or gradient norm skips the update (weights, optimiser and schedule unchanged).
        """
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not hasattr(self.model, "no_sync")
            with contextlib.nullcontext() if sync else self.model.no_sync():
                out = self._forward(batch)
                self.scaler.scale(out.loss / len(batches)).backward()
            for k, v in self._metrics(batch, out).items():
                sums[k] = sums.get(k, 0.0) + v.float() / len(batches)
        self.scaler.unscale_(self.optimizer)
        clip = self.p.clip_norm if self.p.clip_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        finite = bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(sums["loss/total"]))
        if finite:
            self.scaler.step(self.optimizer)
            self.scheduler.step()
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        sums["optim/grad_norm"] = grad_norm.detach().float()
        sums["optim/skipped"] = torch.tensor(0.0 if finite else 1.0, device=grad_norm.device)
        return sums

    def _metrics(self, batch: Batch, out: Any) -> dict[str, torch.Tensor]:
        """The model's metrics plus the majority rate and unigram CE of the labels at the masked frames."""
        dev = out.loss.device
        terms = self.diagnostics.frame_terms(batch.labels, out.mask)
        return {**out.metrics, **{k: v.to(dev) for k, v in terms.items()}}

    # ------------------------------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` from the current position; save, validate and log on schedule."""
        p = self.p
        self._log_config()
        it = iter(self.loader)
        try:
            t_last, sec_acc, wait_acc, n_acc = time.perf_counter(), 0.0, 0.0, 0
            window = MetricWindow()
            while self.step < p.max_steps:
                t0 = time.perf_counter()
                batches = next(it)
                wait_acc += time.perf_counter() - t0
                metrics = self.train_step(batches)
                self._account(metrics, batches)
                window.add(metrics)
                sec_acc += sum(b.seconds for b in batches) * self.info.world_size
                n_acc += 1
                if self.step % p.log_interval == 0 or self.step == p.max_steps:
                    dt = time.perf_counter() - t_last
                    self._log_train(window.mean(metrics), sec_acc / dt, wait_acc / n_acc, wait_acc / dt)
                    t_last, sec_acc, wait_acc, n_acc = time.perf_counter(), 0.0, 0.0, 0
                if p.val_interval and self.step % p.val_interval == 0 and self.step < p.max_steps:
                    self._log(self.diagnostics.on_validation(self.step, self.validate()))
                if (self.step % p.save_interval == 0 or self.step == p.max_steps) and not self.consecutive_skips:
                    self.save_checkpoint()  # never during a run of non-finite steps: the last good one stays newest
        finally:
            it.close()  # stops and joins the prefetch thread and the loader processes before anything else runs
        final = self.diagnostics.on_validation(self.step, self.validate())
        self._log(final)
        return {
            "step": self.step,
            "checkpoint": ckpt.latest_checkpoint(self.ckpt_dir),
            "val": final,
            "export": self.export(),
        }

    def _account(self, metrics: dict[str, torch.Tensor], batches: list[Batch]) -> None:
        """Advance the counters; stop with :class:`TrainingDiverged` after too many non-finite steps."""
        self.step += 1
        self.samples += sum(b.wav.shape[0] for b in batches) * self.info.world_size
        if metrics["optim/skipped"].item() == 0:
            self.consecutive_skips = 0
            return
        self.skipped += 1
        self.consecutive_skips += 1
        log.warning(
            "step %d: non-finite loss or gradient, update skipped (%d in a row, %d total)",
            self.step,
            self.consecutive_skips,
            self.skipped,
        )
        if self.consecutive_skips >= self.p.max_consecutive_skips:
            last = ckpt.latest_checkpoint(self.ckpt_dir)
            raise TrainingDiverged(
                f"{self.consecutive_skips} consecutive steps with a non-finite loss or gradient (up to step "
                f"{self.step}); stopping. The last good checkpoint is {last} (nothing is saved during a run of "
                "non-finite steps). Lower the learning rate or check the data, then rerun to resume from it."
            )

    def _log_train(self, metrics: dict[str, torch.Tensor], audio_rate: float, wait: float, wait_share: float) -> None:
        """Log the window's mean metrics; ``wait``: mean seconds per step waiting for data, ``wait_share``: the
        share of the window's wall time spent waiting (a loader-bound run shows a large share).
        """
        keys = sorted(metrics)
        vals = all_reduce_mean(torch.stack([metrics[k].float() for k in keys]), self.info).tolist()
        out = dict(zip(keys, vals))
        out.update(self.diagnostics.margins(out, ""))
        out.pop("optim/skipped")
        out.update(
            {
                "optim/lr": self.scheduler.get_last_lr()[0],
                "perf/audio_sec_per_sec": audio_rate,
                "perf/data_wait_sec": wait,
                "perf/data_wait_share": wait_share,
                "train/skipped_steps": float(self.skipped),
                "train/samples": float(self.samples),
            }
        )
        self._log({f"train/{k}" if not k.startswith(("optim/", "perf/", "train/")) else k: v for k, v in out.items()})
        self._progress_line(out["loss/total"], audio_rate)

    def _progress_line(self, loss: float, audio_rate: float) -> None:
        """On rank 0, at most every :data:`PROGRESS_SECONDS` (and at the end): the step, the rate and the time left."""
        now = time.perf_counter()
        if not self.info.is_main:
            return
        if self._progress is None:
            self._progress = (now, self.step)
            return
        t0, s0 = self._progress
        if now - t0 < PROGRESS_SECONDS and self.step < self.p.max_steps:
            return
        sec_per_step = (now - t0) / max(1, self.step - s0)
        left = (self.p.max_steps - self.step) * sec_per_step
        log.info("step %d/%d (%d%%): loss %.3f, %.2f s/step, %.0f audio-s/s, about %s left", self.step,
                 self.p.max_steps, 100 * self.step // self.p.max_steps, loss, sec_per_step, audio_rate,
                 _duration(left))  # fmt: skip
        self._progress = (now, self.step)

    def _log(self, metrics: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log_dict(metrics, step=self.step)

    def _log_config(self) -> None:
        if self.logger is not None and self.step == 0:  # + the label statistics (majority rate, entropy) as params
            self.logger.log_config({**self.config_dict(), "labels": self.diagnostics.stats.params()})

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss and per-codebook masked accuracy on fixed crops (eval mode, no mixture), averaged over ranks.

        Next to ``val/acc/{teacher}_k`` it reports, on the same masked frames, ``val/majority_k`` (share of the
        training labels' most frequent code), ``val/acc_margin_k`` (accuracy minus it) and ``val/unigram_ce_k``
        (the CE of predicting the training code frequencies): see :mod:`mert.train.diagnostics`.
        """
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        for step in range(self.p.val_batches):
            for batch in self.val_loader.step_batches(step):
                out = self._forward(batch)
                for k, v in self._metrics(batch, out).items():
                    sums[k] = sums.get(k, 0.0) + v.float() / self.p.val_batches
        keys = sorted(sums)
        vals = all_reduce_mean(torch.stack([sums[k] for k in keys]), self.info).tolist()
        val = {f"val/{k}": v for k, v in zip(keys, vals)}
        return {**val, **self.diagnostics.margins(val, "val/")}

    # ------------------------------------------------------------------------------------------ checkpoints
    def config_dict(self) -> dict[str, Any]:
        """Everything that defines the run (stored in every checkpoint and logged as params)."""
        return {
            "profile": dataclasses.asdict(self.p),
            "encoder": dataclasses.asdict(self.encoder_config),
            "objective": dataclasses.asdict(self.objective),
            "world_size": self.info.world_size,
            "grad_accum": self.accum,
            "teacher": self.labels.identity(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self._model_state(),
            "optimizer": self._optim_state(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_state": {
                "step": self.step,
                "samples": self.samples,
                "skipped": self.skipped,
                "consecutive_skips": self.consecutive_skips,
                "diagnostics": self.diagnostics.state_dict(),
            },
            "data": self.loader.state_dict(),
            "rng": ckpt.rng_state(),
            "config": self.config_dict(),
        }

    def _fsdp(self) -> bool:
        return self.p.parallel == "fsdp" and self.info.distributed

    def _model_state(self) -> dict[str, torch.Tensor]:
        if self._fsdp():  # gather the shards into full CPU tensors (a collective)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()}

    def _optim_state(self) -> dict[str, Any]:
        if self._fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        return self.optimizer.state_dict()

    def _load_model_and_optim(self, model: dict[str, Any], optim: dict[str, Any]) -> None:
        if self._fsdp():  # every rank read the full checkpoint: shard it back
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            opts = StateDictOptions(full_state_dict=True)
            set_state_dict(self.model, self.optimizer, model_state_dict=model, optim_state_dict=optim, options=opts)
            return
        unwrap(self.model).load_state_dict(model)
        self.optimizer.load_state_dict(optim)

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes ``checkpoints/step-XXXXXXXX/checkpoint.pt`` atomically and prunes to ``keep_last``."""
        state = self.state_dict()  # collective under FSDP: every rank takes part
        if not self.info.is_main:
            return None
        path = ckpt.save_checkpoint(self.ckpt_dir, self.step, state, self.p.keep_last)
        log.info("saved %s", path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore every piece of state written by :meth:`save_checkpoint` (the same config is required)."""
        state = ckpt.load_checkpoint(path, map_location="cpu")
        self._load_model_and_optim(state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_schedule(state["config"]["profile"].get("max_steps"))
        self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["data"])
        ts = state["train_state"]
        self.step, self.samples, self.skipped = ts["step"], ts["samples"], ts["skipped"]
        self.consecutive_skips = ts["consecutive_skips"]
        self.diagnostics.load_state_dict(ts.get("diagnostics"))
        ckpt.set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    def _apply_schedule(self, saved_max_steps: int | None) -> None:
        """Set the LR of the next update from the current plan (``lr_factor`` of the step and ``max_steps``).

        For an unchanged plan this is the LR the checkpoint holds; after ``max_steps`` changed it is the re-planned
        decay (:mod:`mert.train.optim`), and the jump is logged.
        """
        step = self.scheduler.last_epoch
        old = self.optimizer.param_groups[0]["lr"]
        lrs = [base * lr_factor(step, self.p) for base in self.scheduler.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = lrs  # what get_last_lr() reports
        if saved_max_steps is not None and saved_max_steps != self.p.max_steps:
            log.info(
                "max_steps %d -> %d at step %d: LR schedule re-planned (warmup unchanged, decay now ends at step "
                "%d); the next update's LR %.3g -> %.3g",
                saved_max_steps,
                self.p.max_steps,
                step,
                self.p.max_steps,
                old,
                lrs[0],
            )

    def export(self) -> Path | None:
        """The encoder in the released HF layout (``MERT.save_pretrained``) under ``OUT/export`` (rank 0)."""
        from mert.model.encoder import MERT

        state = self._model_state()  # a collective under FSDP
        if not self.info.is_main:
            return None
        encoder = MERT(self.encoder_config)
        encoder.load_state_dict({k.removeprefix("mert."): v for k, v in state.items() if k.startswith("mert.")})
        path = self.out / "export"
        encoder.save_pretrained(path)
        return path

    def close(self, status: str = "FINISHED", wait: float | None = None) -> list[str]:
        """Flush and close the logger (``status``: how the MLflow run ends; ``wait``: seconds to keep trying to
        reach the tracker, default the logger's own).

        Returns:
            What the tracker could not be sent, in words ([] when everything was logged, and on ranks > 0).
        """
        logger, self.logger = self.logger, None
        if logger is None:
            return []
        return logger.close(status) if wait is None else logger.close(status, wait=wait)
