"""MERT's pretraining objective around the encoder: masking, in-batch noise mixture, heads and the loss.

MERT (Li et al. 2023, arXiv 2306.00107) trains a HuBERT-style encoder (Hsu et al. 2021, arXiv 2106.07447) to
predict, at masked frames, the 8 codebooks of EnCodec's RVQ (Defossez et al. 2022, arXiv 2210.13438; the acoustic
teacher) with cosine/NCE heads, and to regress the CQT (the musical teacher). Per masked frame
(``mert-reference.md`` section 2, fairseq ``hubert_criterion.py``)::

    L = sum_k CE_k + 1.0 * MSE_cqt + 10 * mean(conv_features ** 2)

:class:`MERTPretrainingModel` takes the CLEAN batch and its targets, then mixes in-batch noise itself, so the
targets can only come from clean audio. The released checkpoint is the encoder alone (``model.mert``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mert.model.config import MERTConfig
from mert.model.encoder import MERT
from mert.model.heads import CQTHead, build_label_head, label_losses
from mert.model.masking import compute_span_mask
from mert.model.mixture import mix_in_batch

HEADS = ("nce", "softmax")
TEACHERS = ("rvq", "kmeans", "bestrq", "melrvq", "hidden")
"""Label sources, as metric names spell them: EnCodec RVQ (MERT-v1), k-means (MERT-v0 / HuBERT), mel BEST-RQ
(MusicFM), Mel-RVQ (MuQ) and k-means of a trained encoder's hidden state (HuBERT iteration 2+); the teachers of
``mert label`` (``label.teacher``)."""
CQT_SCALES = ("linear", "log")


def teacher_kind(name: str) -> str:
    """The :data:`TEACHERS` entry of a label identity's ``name`` (``rvq-random-projection`` -> ``rvq``,
    ``kmeans-mfcc`` -> ``kmeans``, ``bestrq`` -> ``bestrq``, ``melrvq`` -> ``melrvq``, ``hidden`` -> ``hidden``);
    ``rvq`` (MERT's naming)
    for anything else, e.g. the ``hash`` stand-in labels.
    """
    head = str(name).split("-")[0]
    return head if head in TEACHERS else "rvq"


def _default_weights() -> dict[str, float]:
    return {"loss/rvq_ce": 1.0, "loss/cqt_mse": 1.0, "loss/feature_pen": 10.0}


@dataclass
class PretrainingConfig:
    """Pretraining heads, loss weights, masking and mixture settings (the encoder lives in ``MERTConfig``)."""

    final_dim: int = 64
    """Per-codebook projection width of the cosine head (64 for 95M, 128 for 330M)."""
    n_codebooks: int = 8
    """Label sets K: 8 EnCodec RVQ codebooks at 6 kbps; the trainer takes K from the label store."""
    codebook_size: int = 1024
    """Classes C per label set (1024 RVQ codes); the trainer takes C from the label store."""
    logit_temp: float = 0.1
    """Cosine-logit temperature; logits are bounded by 1 / logit_temp."""
    head: str = "nce"
    """``"nce"``: the reference HuBERT cosine head; ``"softmax"``: a plain linear classifier variant."""
    teacher: str = "rvq"
    """Label source, used in metric names: one of :data:`TEACHERS` (``"rvq"``: MERT v1)."""
    cqt_bins: int = 336
    """CQT bins regressed by the musical head (7 octaves x 48 bins from 32.7 Hz)."""
    cqt_scale: str = "linear"
    """Scale of the CQT target in the loss. ``"linear"``: the reference (nnAudio's linear magnitude ``|C|``).
    ``"log"`` (a documented deviation): ``(log1p(cqt_log_gain * |C|) - cqt_log_mean) / cqt_log_std``, which
    compresses the dynamic range (the linear target is dominated by the few loudest bins) and standardises it."""
    cqt_log_gain: float = 100.0
    """Gain before ``log1p`` in the ``log`` scale: magnitudes well below ``1 / gain`` stay linear (a soft floor)."""
    cqt_log_mean: float = 1.37
    """Mean of ``log1p(gain |C|)`` subtracted in the ``log`` scale (fixed statistics). Default: measured on 20 min of
    rendered real music (``mert demo-corpus``, ``source: scores``; the synthetic demo gives 1.19 / 1.29);
    ``mert teacher fit CORPUS OUT --teacher cqt`` measures it (and the std) on your corpus (corpus statistics)."""
    cqt_log_std: float = 1.24
    """Standard deviation of ``log1p(gain |C|)`` divided out in the ``log`` scale (see ``cqt_log_mean``)."""
    cqt_layer: int | None = None
    """Hidden state the CQT head reads. ``None``: the last one (the reference: ``mert_model.py`` predicts the CQT from
    the final layer, like the labels). ``i``: ``hidden_states[i]`` of the encoder (0 = the projected features plus
    the positional conv, ``num_hidden_layers`` = the last; in the pre-LN layout an inner state is the un-normalised
    residual stream, as in :class:`mert.model.encoder.MERTOutput`), a documented deviation: a lower layer is asked to
    hold the frame's log-CQT while the layers above it are free for the label codes (``docs/results/variants.md``,
    third round)."""
    loss_weights: dict[str, float] = field(default_factory=_default_weights)
    """Weight per loss part; ``loss/{teacher}_ce`` weights each codebook's CE (their sum is the part)."""
    pred_nomask_weight: float = 0.0
    """fairseq HuBERT's ``pred_nomask_weight``: weight of the same label CE and CQT terms on the UNMASKED frames,
    added to the masked-frame loss (``w * (CE_u + w_cqt * MSE_cqt_u)``). The reference (MERT, HuBERT) uses 0:
    masked frames only. A small student trained for minutes on a CPU keeps its frame features closer to the
    teachers' information with it (a documented deviation of the ``mert-small-lowcqt`` profile, the main job's)."""
    mask_prob: float = 0.8
    """fairseq ``mask_prob``: span starts ~ mask_prob * T / mask_length (about 55-58% frames masked)."""
    mask_length: int = 5
    """Span length in frames (67 ms at 75 Hz)."""
    min_masks: int = 2
    """Minimum number of spans per clip."""
    mixture_prob: float = 0.5
    """Probability that a clip IS mixed. The reference's flag has the inverted meaning (mix if rand > it);
    both are 0.5 in the released configs. 0 disables the mixture."""
    mixture_len_range: tuple[int, int] = (12000, 24000)
    """Inclusive segment length range in samples (0.5-1.0 s at 24 kHz for 95M; 12000-36000 for 330M)."""
    mixture_n_range: tuple[int, int] = (1, 3)
    """Inclusive range of the number of noise segments per mixed clip."""
    mixture_volume: float = 1.0
    """Gain of the added segments (1.0: unit volume, no SNR control, as in the reference)."""

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.n_codebooks < 1 or self.codebook_size < 2:
            raise ValueError(
                f"n_codebooks must be >= 1 and codebook_size >= 2, got {self.n_codebooks}, {self.codebook_size}"
            )
        if self.cqt_scale not in CQT_SCALES:
            raise ValueError(f"cqt_scale must be one of {CQT_SCALES}, got {self.cqt_scale!r}")
        if self.cqt_log_gain <= 0 or self.cqt_log_std <= 0:
            raise ValueError("cqt_log_gain and cqt_log_std must be > 0")
        self.mixture_len_range = tuple(self.mixture_len_range)
        self.mixture_n_range = tuple(self.mixture_n_range)
        unknown = set(self.loss_weights) - set(self.loss_parts)
        if unknown:
            raise ValueError(f"unknown loss_weights keys {sorted(unknown)}; known: {list(self.loss_parts)}")
        if not 0.0 <= self.mixture_prob <= 1.0 or not 0.0 < self.mask_prob <= 1.0:
            raise ValueError("mixture_prob must be in [0, 1] and mask_prob in (0, 1]")
        if self.pred_nomask_weight < 0:
            raise ValueError(f"pred_nomask_weight must be >= 0, got {self.pred_nomask_weight}")
        if self.cqt_layer is not None and (isinstance(self.cqt_layer, bool) or self.cqt_layer < 0):
            raise ValueError(f"cqt_layer must be None or a hidden-state index >= 0, got {self.cqt_layer!r}")

    @property
    def label_key(self) -> str:
        """Name of the label cross-entropy part, e.g. ``loss/rvq_ce``."""
        return f"loss/{self.teacher}_ce"

    @property
    def loss_parts(self) -> tuple[str, ...]:
        """All loss part names this config can weight."""
        return (self.label_key, "loss/cqt_mse", "loss/feature_pen")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> PretrainingConfig:
        """A preset by name (``mert-tiny``, ``mert-95m``, ``mert-330m``) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        overrides.setdefault("loss_weights", dict(PRESETS[name].loss_weights))  # never share the preset's dict
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def for_labels(
        cls, name: str, teacher: str, n_codebooks: int, codebook_size: int, **overrides: Any
    ) -> PretrainingConfig:
        """Preset ``name`` with its heads sized for a label set: ``teacher`` (metric names), K and C.

        The preset's label cross-entropy weight moves to ``loss/{teacher}_ce``; everything else (CQT and
        feature-penalty weights, masking, mixture) is the preset's. ``overrides`` apply last; in a ``loss_weights``
        override the preset's label key (``loss/rvq_ce``, as profiles write it) means this teacher's too.
        """
        base = cls.from_name(name)

        def rename(w: dict[str, float]) -> dict[str, float]:
            return {(f"loss/{teacher}_ce" if k == base.label_key else k): v for k, v in w.items()}

        weights = rename(base.loss_weights)
        if "loss_weights" in overrides:
            overrides["loss_weights"] = rename(overrides["loss_weights"])
        fields = dict(teacher=teacher, n_codebooks=n_codebooks, codebook_size=codebook_size, loss_weights=weights)
        return dataclasses.replace(base, **{**fields, **overrides})

    @classmethod
    def kmeans_baseline(cls, name: str, clusters: int = 500, **overrides: Any) -> PretrainingConfig:
        """The MERT-v0 / HuBERT-style baseline: one k-means label set of ``clusters`` classes.

        CQT and feature-penalty weights are kept from the preset (MERT-v0 also regressed the CQT).
        """
        return cls.for_labels(name, "kmeans", 1, clusters, **overrides)


PRESETS: dict[str, PretrainingConfig] = {
    # Debug size for tests and the demo: a small projection; everything else as in 95M.
    "mert-tiny": PretrainingConfig(final_dim=16),
    # MERT_RVQ-VAE_CQT_95M.yaml
    "mert-95m": PretrainingConfig(final_dim=64, mixture_len_range=(12000, 24000)),
    # MERT_RVQ-VAE_CQT_330M.yaml
    "mert-330m": PretrainingConfig(final_dim=128, mixture_len_range=(12000, 36000)),
}


def cqt_scaled(cqt: torch.Tensor, config: PretrainingConfig) -> torch.Tensor:
    """The CQT regression target on ``config.cqt_scale``: ``|C|`` (``linear``, the reference) or
    ``(log1p(cqt_log_gain |C|) - cqt_log_mean) / cqt_log_std`` (``log``); any shape, elementwise.
    """
    if config.cqt_scale == "linear":
        return cqt
    return (torch.log1p(config.cqt_log_gain * cqt) - config.cqt_log_mean) / config.cqt_log_std


CQTFn = Callable[[torch.Tensor], torch.Tensor]
"""Clean waveform (B, L) -> linear-magnitude CQT (B, n_bins, T_cqt), e.g. from ``mert.teachers.cqt``."""


@dataclass
class PretrainingOutput:
    """What :class:`MERTPretrainingModel` returns.

    Attributes:
        loss: Scalar, ``sum(w * metrics[k] for k, w in config.loss_weights.items())``.
        metrics: Detached scalars: every loss part (``loss/rvq_ce`` = sum over codebooks, ``loss/rvq_ce_{k}``,
            ``loss/cqt_mse``, ``loss/feature_pen``), ``loss/total``, ``acc/rvq_{k}`` (masked-frame top-1
            accuracy per codebook), ``mask_frac`` (masked fraction of frames) and ``mix_frac`` (mixed clips).
            ``rvq`` reads ``config.teacher`` (``kmeans``, ``bestrq``, ``melrvq``) for the other teachers.
        mask: (B, T) bool, the masked frames (T = frames used, after trimming to the label length).
        mixed: (B,) bool, the clips that received in-batch noise.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    mask: torch.Tensor
    mixed: torch.Tensor


class MERTPretrainingModel(nn.Module):
    """A :class:`MERT` encoder plus MERT's pretraining heads and loss.

    The encoder is ``self.mert`` (its ``state_dict`` is what the released checkpoints hold); the heads are
    ``self.label_head`` (cosine/NCE or softmax) and ``self.cqt_head``.

    Args:
        encoder: A :class:`MERT` or the :class:`MERTConfig` to build one from.
        config: The pretraining config.
        cqt_fn: Optional clean-waveform -> CQT function, used when ``forward`` gets no ``cqt_target``.
    """

    def __init__(self, encoder: MERT | MERTConfig, config: PretrainingConfig, cqt_fn: CQTFn | None = None):
        super().__init__()
        self.mert = encoder if isinstance(encoder, MERT) else MERT(encoder)
        self.config = config
        dim = self.mert.config.hidden_size
        c = config
        self.label_head = build_label_head(c.head, dim, c.n_codebooks, c.codebook_size, c.final_dim, c.logit_temp)
        self.cqt_head = CQTHead(dim, c.cqt_bins)
        self.cqt_fn = cqt_fn
        n_layers = self.mert.config.num_hidden_layers
        if c.cqt_layer is not None and c.cqt_layer > n_layers:
            raise ValueError(f"cqt_layer {c.cqt_layer} is past the encoder's last hidden state ({n_layers})")

    @classmethod
    def from_name(cls, name: str, cqt_fn: CQTFn | None = None, **overrides: Any) -> MERTPretrainingModel:
        """Encoder and pretraining presets of the same name; ``overrides`` apply to the pretraining config."""
        return cls(MERTConfig.from_name(name), PretrainingConfig.from_name(name, **overrides), cqt_fn)

    def sample_mask(self, batch: int, frames: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """Span mask (B, T) with the config's fairseq settings; drawn on the generator's device if given."""
        c = self.config
        dev = generator.device if generator is not None else device
        mask = compute_span_mask(
            batch, frames, c.mask_prob, c.mask_length, c.min_masks, generator=generator, device=dev
        )
        return mask.to(device)

    def forward(
        self,
        wav: torch.Tensor,
        labels: torch.Tensor,
        cqt_target: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        mix: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainingOutput:
        """One pretraining forward pass on a CLEAN batch.

        Order (as the reference): CQT target from the clean audio, then in-batch noise mixture, then the
        encoder on the mixed audio with span masking; the loss is taken on masked frames only.

        Args:
            wav: (B, L) clean waveforms at 24 kHz. Never pass mixed audio: mixing happens here.
            labels: (B, K, T_lab) integer codes of the clean audio (or (B, T_lab) for one label set). Labels
                and outputs are trimmed to ``T = min(num_frames(L), T_lab)`` (5 s: 374 frames vs 375 codes).
            cqt_target: (B, n_bins, T_cqt) linear-magnitude CQT of the clean audio, T_cqt >= T (the extra
                frames are dropped); if None, ``cqt_fn(wav)`` is used, else the CQT loss is skipped (an error
                if its weight is non-zero).
            mask: Optional (B, T) bool mask to use instead of sampling one.
            mix: Apply the in-batch noise mixture; default: in training mode when ``mixture_prob > 0``.
            generator: Optional torch.Generator on ``wav.device`` seeding the mixture and the mask.

        Returns:
            :class:`PretrainingOutput`.
        """
        labels = labels.unsqueeze(1) if labels.dim() == 2 else labels  # (B, K, T_lab)
        self._check_inputs(wav, labels)
        if cqt_target is None and self.cqt_fn is not None:
            with torch.no_grad():
                cqt_target = self.cqt_fn(wav)  # clean audio, before the mixture
        wav_in, mixed = self._mix(wav, mix, generator)
        B, L = wav.shape
        frames = self.mert.config.num_frames(L)
        T = min(frames, labels.shape[-1])
        if mask is None:
            mask = self.sample_mask(B, T, generator, wav.device)
        elif mask.shape != (B, T):
            raise ValueError(f"mask must be (batch, frames) = {(B, T)}, got {tuple(mask.shape)}")
        states = cqt_target is not None and self.config.cqt_layer is not None
        out = self.mert(wav_in, mask=F.pad(mask, (0, frames - T)), output_hidden_states=states)  # tail unmasked
        h = out.last_hidden_state[:, :T]
        h_cqt = out.hidden_states[self.config.cqt_layer][:, :T] if states else h  # (B, T, D)
        metrics = self._label_terms(h[mask], labels[..., :T].transpose(1, 2)[mask])  # masked frames only
        metrics["loss/feature_pen"] = out.features[:, :T].float().pow(2).mean()
        if cqt_target is not None:
            metrics["loss/cqt_mse"] = self._cqt_mse(h_cqt[mask], cqt_target, mask)
        loss = self._total(metrics)
        if self.config.pred_nomask_weight > 0:
            loss = loss + self._nomask_terms(h, labels[..., :T], cqt_target, mask, metrics, h_cqt)
        metrics = {k: v.detach() for k, v in metrics.items()}
        metrics.update(
            {"loss/total": loss.detach(), "mask_frac": mask.float().mean(), "mix_frac": mixed.float().mean()}
        )
        return PretrainingOutput(loss=loss, metrics=metrics, mask=mask, mixed=mixed)

    def _nomask_terms(self, h: torch.Tensor, labels: torch.Tensor, cqt_target: torch.Tensor | None,
                      mask: torch.Tensor, metrics: dict[str, torch.Tensor],
                      h_cqt: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``pred_nomask_weight * (CE + w_cqt * MSE_cqt)`` on the unmasked frames; their parts go to ``metrics``.

        Args:
            h: (B, T, D) last hidden states.
            h_cqt: (B, T, D) hidden states the CQT head reads (``cqt_layer``; ``h`` when it is None).
            labels: (B, K, T) integer codes.
            cqt_target: (B, n_bins, T_cqt) clean CQT, or None (then no CQT term).
            mask: (B, T) masked frames (excluded here).
            metrics: receives ``loss/{teacher}_ce_nomask``, ``acc/{teacher}_nomask``, ``loss/cqt_mse_nomask``.
        """
        keep = ~mask
        t, c = self.config.teacher, self.config
        ce, acc = label_losses(self.label_head(h[keep]), labels.transpose(1, 2)[keep].long())  # (K,), (K,)
        metrics[f"loss/{t}_ce_nomask"] = ce.sum()
        metrics[f"acc/{t}_nomask"] = acc.mean()
        total = ce.sum() * c.loss_weights.get(c.label_key, 1.0)
        w_cqt = c.loss_weights.get("loss/cqt_mse", 0.0)
        if cqt_target is not None and w_cqt:
            metrics["loss/cqt_mse_nomask"] = self._cqt_mse(h_cqt[keep], cqt_target, keep)
            total = total + w_cqt * metrics["loss/cqt_mse_nomask"]
        return c.pred_nomask_weight * total

    def _check_inputs(self, wav: torch.Tensor, labels: torch.Tensor) -> None:
        if wav.dim() != 2:
            raise ValueError(f"wav must be (batch, samples), got {tuple(wav.shape)}")
        K = self.config.n_codebooks
        if labels.dim() != 3 or labels.shape[:2] != (wav.shape[0], K):
            raise ValueError(f"labels must be (batch, {K}, frames), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer codes, got {labels.dtype}")

    def _mix(self, wav: torch.Tensor, mix: bool | None, generator: torch.Generator | None):
        c = self.config
        if mix is None:
            mix = self.training and c.mixture_prob > 0
        if not mix:
            return wav, torch.zeros(wav.shape[0], dtype=torch.bool, device=wav.device)
        res = mix_in_batch(
            wav, c.mixture_prob, c.mixture_len_range, c.mixture_n_range, c.mixture_volume, generator=generator
        )
        return res.wav, res.mixed

    def _label_terms(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-codebook CE and accuracy on masked frames: x (N, D), targets (N, K) -> metrics."""
        ce, acc = label_losses(self.label_head(x), targets.long())  # (K,), (K,)
        t = self.config.teacher
        terms = {self.config.label_key: ce.sum()}
        for k in range(ce.shape[0]):
            terms[f"loss/{t}_ce_{k}"] = ce[k]
            terms[f"acc/{t}_{k}"] = acc[k]
        return terms

    def _cqt_mse(self, x: torch.Tensor, cqt_target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE between the CQT head at masked frames and the clean CQT (B, n_bins, T_cqt) truncated to T."""
        B, T = mask.shape
        bins = self.config.cqt_bins
        if cqt_target.dim() != 3 or cqt_target.shape[0] != B or cqt_target.shape[1] != bins:
            raise ValueError(f"cqt_target must be (batch, {bins}, frames), got {tuple(cqt_target.shape)}")
        if cqt_target.shape[2] < T:
            raise ValueError(f"cqt_target has {cqt_target.shape[2]} frames, fewer than the {T} encoder frames")
        target = cqt_target[:, :, :T].transpose(1, 2)[mask]  # (N, n_bins)
        return F.mse_loss(self.cqt_head(x).float(), cqt_scaled(target.float(), self.config))

    def _total(self, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum(w * part)`` over the configured weights; a weighted part that was not computed is an error."""
        total = None
        for key, w in self.config.loss_weights.items():
            if w == 0:
                continue
            if key not in metrics:
                raise ValueError(f"loss part {key!r} has weight {w} but was not computed (no CQT target/cqt_fn?)")
            total = w * metrics[key] if total is None else total + w * metrics[key]
        if total is None:
            raise ValueError("all loss weights are zero")
        return total
