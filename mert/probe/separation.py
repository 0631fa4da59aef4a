"""Source-separation probing (MUSDB18 in MARBLE): a BiLSTM on frozen 75 Hz features predicts STFT masks.

The STFT uses hop 320 at 24 kHz (the features' 75 Hz grid) and a 1024-point Hann window; the probe's
sigmoid masks multiply the mixture magnitude, the loss is L1 against each source's magnitude, and estimates
are resynthesised with the mixture phase. Scored by SDR (``mert.probe.metrics.sdr``) per source and excerpt,
averaged; the primary metric ``sdr`` is the mean over sources. Same layer x LR sweep and early stopping as the
MLP probes (:mod:`mert.probe.sweep`). The reference rate printed next to the score is the SDR of the equal split
(every source estimated as the mixture / S), which uses nothing but the mixture.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mert.audio import AudioError
from mert.probe.features import Features, extract
from mert.probe.models import HOP, SAMPLE_RATE, FeatureModel
from mert.probe.probes import LSTMMaskProbe
from mert.probe.sweep import SweepResult, clip_record
from mert.probe.tasks import SPLITS, Example, Task
from mert.utils.rng import seeded
from mert.utils.runtime import intra_op_threads

N_FFT = 1024


@dataclass
class SepData:
    """One split: features ``(N, T, n_layers, D)``, mixture STFT ``(N, F, T)`` complex, sources ``(N, S, L)``."""

    x: Tensor
    mix: Tensor
    sources: Tensor
    keys: list[str] = field(default_factory=list)


def stft(wav: Tensor) -> Tensor:
    """``(..., L)`` -> complex ``(..., F, L // HOP + 1)``."""
    window = torch.hann_window(N_FFT)
    return torch.stft(wav.reshape(-1, wav.shape[-1]), N_FFT, HOP, window=window, return_complex=True).reshape(
        *wav.shape[:-1], N_FFT // 2 + 1, -1
    )


def istft(spec: Tensor, length: int) -> Tensor:
    """Complex ``(..., F, T)`` -> ``(..., length)``."""
    flat = spec.reshape(-1, *spec.shape[-2:])
    wav = torch.istft(flat, N_FFT, HOP, window=torch.hann_window(N_FFT), length=length)
    return wav.reshape(*spec.shape[:-2], length)


def _load_stems(e: Example, sources: list[str]) -> np.ndarray:
    from mert.audio import load_audio

    start = int(round(e.start * SAMPLE_RATE))
    stop = None if e.duration is None else start + int(round(e.duration * SAMPLE_RATE))
    return np.stack([load_audio(e.target[s], SAMPLE_RATE)[start:stop] for s in sources])  # (S, L)


def _split(task: Task, feats: Features, split: str) -> SepData:
    """Equal-length excerpts of a split (cropped to the shortest) with their mixture STFT and source stems."""
    xs, stems, keys = [], [], []
    for e in task.split(split):
        if e.key not in feats.rows:
            continue
        try:
            stems.append(_load_stems(e, task.classes))
        except AudioError as err:
            feats.skipped[str(err.path)] = err.reason
            continue
        xs.append(feats.rows[e.key])  # (T, n_layers, D)
        keys.append(e.key)
    if not xs:
        raise ValueError(f"{task.name}: no usable excerpts in split {split!r}")
    length = min(s.shape[1] for s in stems)
    sources = torch.from_numpy(np.stack([s[:, :length] for s in stems])).float()  # (N, S, L)
    mix = stft(sources.sum(1))  # (N, F, T'); MUSDB's mixture is the sum of its stems
    frames = min(min(len(x) for x in xs), mix.shape[-1])
    x = torch.from_numpy(np.stack([x[:frames] for x in xs])).float()  # (N, T, n_layers, D)
    return SepData(x, mix[..., :frames], sources, keys)


def _estimate(model: LSTMMaskProbe, data: SepData) -> Tensor:
    """Masked mixture spectrograms ``(N, S, F, T)`` (complex, mixture phase)."""
    masks = model(data.x)  # (N, S, F, T)
    return masks * data.mix[:, None]


@torch.no_grad()
def evaluate(model: LSTMMaskProbe, data: SepData, sources: list[str], clips: bool = False):
    """Mean SDR per source over excerpts, and their mean (``sdr``).

    Args:
        model: the trained mask probe.
        data: the split to score.
        sources: source names (the task's classes).
        clips: also return the per-excerpt record (``keys`` + ``scores``: SDR averaged over sources).
    """
    model.eval()
    est = istft(_estimate(model, data), data.sources.shape[-1]).numpy()  # (N, S, L)
    return _scores(est, data, sources, clips)


def _scores(est: np.ndarray, data: SepData, sources: list[str], clips: bool = False):
    from mert.probe.metrics import sdr

    ref = data.sources.numpy()
    table = np.array([[sdr(est[n, i], ref[n, i]) for i in range(len(sources))] for n in range(len(ref))])  # (N, S)
    per = {f"sdr_{s}": float(np.mean(table[:, i])) for i, s in enumerate(sources)}
    m = {"sdr": float(np.mean(list(per.values())))} | per
    return (m, clip_record(data.keys, {"scores": table.mean(1)})) if clips else m


def equal_split(data: SepData, sources: list[str]) -> dict:
    """The reference rate: SDR of estimating every source as ``mixture / S`` (no information about the sources)."""
    mix = data.sources.sum(1, keepdim=True).numpy()  # (N, 1, L)
    est = np.repeat(mix / len(sources), len(sources), axis=1)
    return {"rate": _scores(est, data, sources)["sdr"], "baseline": f"every source = mixture / {len(sources)}"}


def fit(data: dict[str, SepData], layer: int | None, lr: float, params, sources: list[str]):
    """Train one BiLSTM mask probe with early stopping on validation SDR."""
    train = data["train"]
    n_layers, dim = train.x.shape[2:]
    with seeded(params.seed):  # probes train in threads: no other probe draws (or builds a twin) in between
        model = LSTMMaskProbe(n_layers, dim, N_FFT // 2 + 1, len(sources), layer, params.lstm_hidden,
                              params.lstm_layers)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    target = torch.stack([stft(train.sources[:, i]) for i in range(len(sources))], 1).abs()  # (N, S, F, T')
    target = target[..., : train.mix.shape[-1]]
    gen = torch.Generator().manual_seed(params.seed)
    best, best_m, best_state, wait = -math.inf, {}, copy.deepcopy(model.state_dict()), 0
    for _ in range(params.max_epochs):
        model.train()
        for b in torch.randperm(len(train.x), generator=gen).split(params.batch_size):
            est = model(train.x[b]) * train.mix[b].abs()[:, None]  # (B, S, F, T)
            loss = (est - target[b]).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        m = evaluate(model, data["valid"], sources)
        if m["sdr"] > best:
            best, best_m, best_state, wait = m["sdr"], m, copy.deepcopy(model.state_dict()), 0
        elif (wait := wait + 1) >= params.patience:
            break
    model.load_state_dict(best_state)
    return model, best_m


def separation_sweep(task: Task, model: FeatureModel, params) -> tuple[SweepResult, Features]:
    """Every layer (and the weighted sum) x LR for the separation probe; best by validation SDR, test reported.

    Raises:
        ValueError: ``params.seeds`` > 1 (seed averaging is for the MLP probes).
    """
    if params.seeds != 1:
        raise ValueError(f"{task.name}: probe.seeds = {params.seeds}: the separation probe trains one seed (set 1)")
    feats = extract(model, task.examples, "frame", 0.0, 0.0, params.extract_batch_size, params.cache_dir or None,
                    params.cache_dtype, params.device)  # fmt: skip
    data = {s: _split(task, feats, s) for s in SPLITS}
    mu = data["train"].x.mean((0, 1), keepdim=True)
    sd = data["train"].x.std((0, 1), keepdim=True).clamp_min(1e-5)  # (1, 1, n_layers, D)
    for d in data.values():
        d.x = (d.x - mu) / sd
    n_layers = data["train"].x.shape[2]
    layers = list(range(n_layers)) + ([None] if params.weighted_sum and n_layers > 1 else [])
    per_layer, per_lr, per_test, best, weights = {}, {}, {}, None, None
    with intra_op_threads(params.threads):
        for layer in layers:
            name = "weighted" if layer is None else str(layer)
            (probe, valid_m), lr = max(
                ((fit(data, layer, lr, params, task.classes), lr) for lr in params.lrs), key=lambda f: f[0][1]["sdr"]
            )
            test_m, record = evaluate(probe, data["test"], task.classes, clips=True)
            per_layer[name], per_lr[name], per_test[name] = valid_m["sdr"], lr, test_m["sdr"]
            weights = probe.select.layer_weights() if layer is None else weights
            if best is None or valid_m["sdr"] > best[1]["sdr"]:
                best = (name, valid_m, test_m, record)
    name, valid_m, test_m, record = best
    result = SweepResult("sdr", per_layer, per_lr, per_test, name, test_m, valid_m, weights, test_clips=record)
    result.extra["reference"] = equal_split(data["test"], task.classes)
    return result, feats
