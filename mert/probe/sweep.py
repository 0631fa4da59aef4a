"""The layer x learning-rate sweep: train a probe per (layer, LR), pick by validation, report on test.

Protocol (reference section 5): Adam, batch 64, LR grid, up to ``max_epochs`` with early stopping on the
validation metric (patience ``patience`` epochs, best epoch's weights kept); every layer separately plus
the softmax-weighted sum of layers; the (layer, LR) with the best validation score is reported on test.
Features are standardised per (layer, dim) with training-split statistics. Fixed seeds: deterministic on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
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
from mert.probe.params import SweepConfig
from mert.probe.probes import MLPProbe, SplitData, clip_mean
from mert.probe.tasks import CLASS_KINDS, SPLITS, Task
from mert.utils.rng import seeded
from mert.utils.runtime import intra_op_threads

log = logging.getLogger(__name__)


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
    test_clips: dict[str, Any] | None = None
    """Per-clip test record of the selected probe (:func:`clip_record`): what the evidence is computed from."""
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


def evaluate(model: nn.Module, task: Task, data: SplitData, norm: dict, cfg: SweepConfig, threshold=None,
             clips: bool = False):  # fmt: skip
    """Metrics of a probe on one split (clip-level predictions averaged over windows).

    Beat tracking picks the peak threshold with the best mean F-measure (or uses ``threshold``).

    Args:
        model: the probe.
        task: the task (kind, classes).
        data: the split to score.
        norm: regression target mean/std (train statistics) to undo the standardisation.
        cfg: sweep settings (beat tolerance).
        threshold: beat peak threshold chosen on validation (``None``: search :data:`beats.THRESHOLDS`).
        clips: also return the per-clip record of the primary metric (see :func:`clip_record`).

    Returns:
        The metrics dict, or ``(metrics, record)`` with ``clips``.
    """
    out = predict(model, data.x)  # (R, n_out)
    kind = task.kind
    if kind in CLASS_KINDS:
        probs = clip_mean(torch.softmax(out, 1), data).numpy()
        m = metrics.classification(probs, data.truth, task.classes, key=kind == "key")
        pred = probs.argmax(1)
        rec = {"scores": metrics.class_scores(pred, data.truth, task.classes, key=kind == "key"),
               "pred": [task.classes[i] for i in pred]}  # fmt: skip
    elif kind == "multilabel":
        scores = clip_mean(torch.sigmoid(out), data).numpy()
        m, rec = metrics.multilabel(scores, data.truth), {"pred": scores, "truth": data.truth}
    elif kind == "regression":
        pred = (clip_mean(out, data) * norm["y_std"] + norm["y_mean"]).numpy()
        m, rec = metrics.regression(pred, data.truth, task.classes), {"pred": pred, "truth": data.truth}
    else:
        acts = torch.sigmoid(out[:, 0]).numpy()
        acts = [acts[data.offsets[i] : data.offsets[i + 1]] for i in range(data.n_clips)]
        candidates = beat_utils.THRESHOLDS if threshold is None else (threshold,)
        per = beat_utils.threshold_scores(acts, data.truth, candidates, cfg.beat_tolerance)  # (K, N)
        k = int(np.argmax(per.mean(1)))  # first best, like max() over the candidates in order
        m = {"beat_f1": float(per[k].mean()), "threshold": float(candidates[k])}
        rec = {"scores": per[k]}
    return (m, clip_record(data.keys, rec)) if clips else m


def clip_record(keys: list[str], rec: dict[str, Any]) -> dict[str, Any]:
    """JSON-able per-clip test record: ``keys`` plus ``scores`` (per-clip metric) or ``pred``/``truth`` arrays."""
    out: dict[str, Any] = {"keys": list(keys)}
    for name, v in rec.items():
        out[name] = np.round(np.asarray(v, np.float64), 6).tolist() if isinstance(v, np.ndarray) else list(v)
    return out


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
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - pos) / pos), reduction="none")


def _frame_batch(train: SplitData, clips: Tensor, fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rows of a frame-level batch and their loss weights (summing to 1 in expectation).

    Every frame with a non-zero target is kept; a frame with target 0 is kept with probability ``fraction`` and
    weighted ``1 / fraction``: the weighted sum is an unbiased estimate of the mean loss over all the batch's
    frames (importance-weighted negative subsampling), at ~``fraction`` of the cost.
    """
    rows = train.clip_rows(clips.numpy())
    n = len(rows)
    if fraction >= 1:
        return rows, torch.full((n,), 1.0 / n)
    positive = train.y[rows] > 0
    keep = positive | (torch.rand(n, generator=gen) < fraction)
    weight = torch.where(positive[keep], 1.0, 1.0 / fraction) / n
    return rows[keep], weight


def fit(task: Task, splits: dict[str, SplitData], norm: dict, layer: int | None, lr: float, cfg: SweepConfig):
    """Train one probe with early stopping on the validation metric.

    A single-layer probe reads a view of its layer (``x[:, layer:layer+1]``), so a batch copies ``D`` numbers
    per row instead of ``n_layers * D``; the probe (no parameters in the layer choice) is the same.

    Returns:
        ``(model, valid_metrics, splits)`` with the weights of the best validation epoch, and the splits the
        model reads (the layer views for a single-layer probe).
    """
    if layer is not None:
        splits = {s: dataclasses.replace(d, x=d.x[:, layer : layer + 1]) for s, d in splits.items()}
    train, valid = splits["train"], splits["valid"]
    n_layers, dim = train.x.shape[1:]
    with seeded(cfg.seed):  # the flow probes in threads: no other probe draws (or builds a twin) in between
        model = MLPProbe(n_layers, dim, n_outputs(task), None if layer is None else 0, cfg.hidden, cfg.dropout,
                         cfg.seed)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = _loss_fn(task, train)
    gen = torch.Generator().manual_seed(cfg.seed)
    frames_gen = torch.Generator().manual_seed(cfg.seed + 1)  # negative subsampling; batch order stays as above
    frame_level = task.kind == "beats"
    units = train.n_clips if frame_level else len(train.x)
    best, best_metrics, best_state, wait = -math.inf, {}, copy.deepcopy(model.state_dict()), 0
    for _ in range(cfg.max_epochs):
        model.train()
        for b in torch.randperm(units, generator=gen).split(cfg.batch_size):
            if frame_level:
                rows, weight = _frame_batch(train, b, cfg.beat_negative_fraction, frames_gen)
                loss = (loss_fn(model(train.x[rows]), train.y[rows][:, None])[:, 0] * weight).sum()
            else:
                loss = loss_fn(model(train.x[b]), train.y[b])
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
    return model, best_metrics, splits


class ProbeEnsemble(nn.Module):
    """Probes of one (layer, LR) trained from different seeds, predicting their average.

    ``forward`` returns what :func:`evaluate` expects of a probe, so that its softmax / sigmoid is the members' mean
    probability: ``log(mean softmax)`` for class tasks, ``logit(mean sigmoid)`` for tags and beat activations, the
    mean for regression. ``(R, n_layers, D) -> (R, n_out)``.
    """

    def __init__(self, members: list[nn.Module], kind: str):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        out = torch.stack([m(x) for m in self.members])  # (S, R, n_out)
        if self.kind in CLASS_KINDS:
            return torch.log(torch.softmax(out, -1).mean(0))
        if self.kind in ("multilabel", "beats"):
            return torch.logit(torch.sigmoid(out).mean(0), eps=1e-7)
        return out.mean(0)

    def layer_weights(self) -> list[float] | None:
        """The members' mean softmax layer weights (None for a single-layer probe)."""
        weights = [m.layer_weights() for m in self.members]
        return None if weights[0] is None else np.mean(weights, 0).tolist()


def fit_seeds(task: Task, splits: dict[str, SplitData], norm: dict, layer: int | None, lr: float, cfg: SweepConfig):
    """:func:`fit` from ``cfg.seeds`` seeds (``cfg.seed`` upwards); more than one: their :class:`ProbeEnsemble`.

    Returns:
        ``(model, valid_metrics, splits)`` as :func:`fit`; the ensemble's validation metrics (a beat threshold is
        chosen for the ensemble's activations).
    """
    if cfg.seeds == 1:
        return fit(task, splits, norm, layer, lr, cfg)
    fits = [fit(task, splits, norm, layer, lr, dataclasses.replace(cfg, seed=cfg.seed + i)) for i in range(cfg.seeds)]
    views = fits[0][2]
    model = ProbeEnsemble([f[0] for f in fits], task.kind)
    return model, evaluate(model, task, views["valid"], norm, cfg), views


def sweep(task: Task, splits: dict[str, SplitData], norm: dict, cfg: SweepConfig) -> SweepResult:
    """Every layer (and the weighted sum) x every LR; best by validation, reported on test.

    With ``cfg.seeds`` > 1 each (layer, LR) is an average of probes from that many seeds (:func:`fit_seeds`).
    """
    with intra_op_threads(cfg.threads):
        return _sweep(task, splits, norm, cfg)


def _sweep(task: Task, splits: dict[str, SplitData], norm: dict, cfg: SweepConfig) -> SweepResult:
    n_layers = splits["train"].x.shape[1]
    layers: list[int | None] = list(range(n_layers)) + ([None] if cfg.weighted_sum and n_layers > 1 else [])
    kind = task.kind
    per_layer, per_lr, per_test, best, weights = {}, {}, {}, None, None
    for layer in layers:
        name = "weighted" if layer is None else str(layer)
        fits = [(fit_seeds(task, splits, norm, layer, lr, cfg), lr) for lr in cfg.lrs]
        (model, valid_m, views), lr = max(fits, key=lambda f: _score(f[0][1], kind))
        test_m, record = evaluate(model, task, views["test"], norm, cfg, valid_m.get("threshold"), clips=True)
        per_layer[name], per_lr[name] = valid_m[metrics.PRIMARY[kind]], lr
        per_test[name] = test_m[metrics.PRIMARY[kind]]
        weights = model.layer_weights() if layer is None else weights
        log.info("%s layer %s: valid %.4f (lr %g), test %.4f", task.name, name, per_layer[name], lr, per_test[name])
        if best is None or _score(valid_m, kind) > _score(best[1], kind):
            best = (name, valid_m, test_m, record)
    name, valid_m, test_m, record = best
    return SweepResult(metrics.PRIMARY[kind], per_layer, per_lr, per_test, name, test_m, valid_m, weights,
                       test_clips=record)  # fmt: skip
