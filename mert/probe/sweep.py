"""The layer x learning-rate sweep: train a probe per (layer, LR), pick by validation, report on test.

Protocol (reference section 5): Adam, batch 64, LR grid, up to ``max_epochs`` with early stopping on the
validation metric (patience ``patience`` epochs, best epoch's weights kept); every layer separately plus
the softmax-weighted sum of layers; the (layer, LR) with the best validation score is reported on test.
Features are standardised per (layer, dim) with training-split statistics. Fixed seeds: deterministic on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mert.probe import beats as beat_utils
from mert.probe import metrics
from mert.probe.features import Features
from mert.probe.probes import MLPProbe, SplitData, clip_mean
from mert.probe.tasks import CLASS_KINDS, SPLITS, Task

log = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    """Probe-training settings (the ``probe`` section of params.yaml carries them)."""

    lrs: tuple[float, ...] = (5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2)  # the MARBLE grid (reference section 5)
    max_epochs: int = 100
    patience: int = 10
    batch_size: int = 64
    hidden: int = 512
    dropout: float = 0.2
    seed: int = 0
    weighted_sum: bool = True
    beat_tolerance: float = 0.07
    threads: int = 1  # intra-op threads while training probes (tiny matmuls: more threads only spin)


@dataclass
class SweepResult:
    """Per-layer validation scores, the selected probe and its test metrics."""

    metric: str
    per_layer: dict[str, float]
    per_layer_lr: dict[str, float]
    per_layer_test: dict[str, float]
    best_layer: str
    test_metrics: dict[str, float]
    valid_metrics: dict[str, float]
    layer_weights: list[float] | None = None
    """Softmax weights of the weighted-sum probe (whether or not it won)."""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- data
def build_splits(task: Task, feats: Features) -> tuple[dict[str, SplitData], dict[str, Any]]:
    """Stack features and targets per split (skipped files dropped), standardised with train statistics."""
    splits = {s: _split_data(task, feats, s) for s in SPLITS}
    x = splits["train"].x
    mu, sd = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-5)  # (1, n_layers, D)
    norm: dict[str, Any] = {}
    if task.kind == "regression":
        y = splits["train"].y
        norm = {"y_mean": y.mean(0), "y_std": y.std(0).clamp_min(1e-6)}
    for d in splits.values():
        d.x = (d.x - mu) / sd
        if norm:
            d.y = (d.y - norm["y_mean"]) / norm["y_std"]
    return splits, norm


def _split_data(task: Task, feats: Features, split: str) -> SplitData:
    examples = [e for e in task.split(split) if e.key in feats.rows]
    if not examples:
        raise ValueError(f"{task.name}: no decodable files left in split {split!r} (skipped: {len(feats.skipped)})")
    rows = [feats.rows[e.key] for e in examples]  # (n_rows_i, n_layers, D) each
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    x = torch.from_numpy(np.concatenate(rows).astype(np.float32))
    if task.kind == "beats":
        y = np.concatenate([beat_utils.frame_targets(e.target, len(r)) for e, r in zip(examples, rows)])
        truth: Any = [np.asarray(e.target) for e in examples]
    else:
        truth = np.stack([np.asarray(e.target) for e in examples])
        y = np.repeat(truth, np.diff(offsets), axis=0)  # every window carries its clip's target
    dtype = torch.long if task.kind in CLASS_KINDS else torch.float32
    return SplitData(x, torch.as_tensor(y, dtype=dtype), offsets, truth, [e.key for e in examples])


def n_outputs(task: Task) -> int:
    return 1 if task.kind == "beats" else len(task.classes)


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model: nn.Module, x: Tensor, chunk: int = 8192) -> Tensor:
    model.eval()
    return torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def evaluate(model: nn.Module, task: Task, data: SplitData, norm: dict, cfg: SweepConfig, threshold=None) -> dict:
    """Metrics of a probe on one split (clip-level predictions averaged over windows)."""
    out = predict(model, data.x)  # (R, n_out)
    kind = task.kind
    if kind in CLASS_KINDS:
        probs = clip_mean(torch.softmax(out, 1), data).numpy()
        return metrics.classification(probs, data.truth, task.classes, key=kind == "key")
    if kind == "multilabel":
        return metrics.multilabel(clip_mean(torch.sigmoid(out), data).numpy(), data.truth)
    if kind == "regression":
        pred = clip_mean(out, data) * norm["y_std"] + norm["y_mean"]
        return metrics.regression(pred.numpy(), data.truth, task.classes)
    acts = torch.sigmoid(out[:, 0]).numpy()
    acts = [acts[data.offsets[i] : data.offsets[i + 1]] for i in range(data.n_clips)]
    candidates = beat_utils.THRESHOLDS if threshold is None else (threshold,)
    scored = [(metrics.beat_f1(beat_utils.decode(acts, t), data.truth, cfg.beat_tolerance), t) for t in candidates]
    best, t = max(scored, key=lambda s: s[0]["beat_f1"])
    return best | {"threshold": float(t)}


def _score(m: dict, kind: str) -> float:
    v = m[metrics.PRIMARY[kind]]
    return -math.inf if v is None or math.isnan(v) else float(v)


# ---------------------------------------------------------------------------------------------- training
def _loss_fn(task: Task, train: SplitData) -> nn.Module:
    if task.kind in CLASS_KINDS:
        return nn.CrossEntropyLoss()
    if task.kind == "multilabel":
        return nn.BCEWithLogitsLoss()
    if task.kind == "regression":
        return nn.MSELoss()
    pos = float((train.y > 0.5).float().mean().clamp_min(1e-4))
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - pos) / pos))


def fit(task: Task, splits: dict[str, SplitData], norm: dict, layer: int | None, lr: float, cfg: SweepConfig):
    """Train one probe with early stopping on the validation metric.

    Returns:
        ``(model, valid_metrics)`` with the weights of the best validation epoch.
    """
    train, valid = splits["train"], splits["valid"]
    torch.manual_seed(cfg.seed)
    n_layers, dim = train.x.shape[1:]
    model = MLPProbe(n_layers, dim, n_outputs(task), layer, cfg.hidden, cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = _loss_fn(task, train)
    gen = torch.Generator().manual_seed(cfg.seed)
    frame_level = task.kind == "beats"
    units = train.n_clips if frame_level else len(train.x)
    best, best_metrics, best_state, wait = -math.inf, {}, copy.deepcopy(model.state_dict()), 0
    for _ in range(cfg.max_epochs):
        model.train()
        for b in torch.randperm(units, generator=gen).split(cfg.batch_size):
            rows = train.clip_rows(b.numpy()) if frame_level else b
            out = model(train.x[rows])
            y = train.y[rows][:, None] if frame_level else train.y[rows]
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        m = evaluate(model, task, valid, norm, cfg)
        if _score(m, task.kind) > best:
            best, best_metrics, best_state, wait = _score(m, task.kind), m, copy.deepcopy(model.state_dict()), 0
        else:
            wait += 1
            if wait >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return model, best_metrics


@contextlib.contextmanager
def _num_threads(n: int):
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sweep(task: Task, splits: dict[str, SplitData], norm: dict, cfg: SweepConfig) -> SweepResult:
    """Every layer (and the weighted sum) x every LR; best by validation, reported on test."""
    with _num_threads(cfg.threads):
        return _sweep(task, splits, norm, cfg)


def _sweep(task: Task, splits: dict[str, SplitData], norm: dict, cfg: SweepConfig) -> SweepResult:
    n_layers = splits["train"].x.shape[1]
    layers: list[int | None] = list(range(n_layers)) + ([None] if cfg.weighted_sum and n_layers > 1 else [])
    kind = task.kind
    per_layer, per_lr, per_test, best, weights = {}, {}, {}, None, None
    for layer in layers:
        name = "weighted" if layer is None else str(layer)
        fits = [(fit(task, splits, norm, layer, lr, cfg), lr) for lr in cfg.lrs]
        (model, valid_m), lr = max(fits, key=lambda f: _score(f[0][1], kind))
        test_m = evaluate(model, task, splits["test"], norm, cfg, threshold=valid_m.get("threshold"))
        per_layer[name], per_lr[name] = valid_m[metrics.PRIMARY[kind]], lr
        per_test[name] = test_m[metrics.PRIMARY[kind]]
        weights = model.select.layer_weights() if layer is None else weights
        log.info("%s layer %s: valid %.4f (lr %g), test %.4f", task.name, name, per_layer[name], lr, per_test[name])
        if best is None or _score(valid_m, kind) > _score(best[1], kind):
            best = (name, valid_m, test_m, model)
    name, valid_m, test_m, model = best
    return SweepResult(metrics.PRIMARY[kind], per_layer, per_lr, per_test, name, test_m, valid_m, weights)
