"""``MERTConfig``: one dataclass for the MERT encoder, with presets and HF ``config.json`` conversion.

The two real presets reproduce the released encoders (``m-a-p/MERT-v1-95M`` and ``m-a-p/MERT-v1-330M``,
see ``docs/mert-reference.md`` section 1.2); ``mert-tiny`` keeps the same conv front end (so the same
75 Hz frame rate) with a 32-dim, 2-layer transformer for tests and the demo.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A model config that is invalid or describes a variant we do not implement."""


@dataclass
class MERTConfig:
    """Hyper-parameters of the MERT encoder (HuBERT-style conv front end + transformer).

    Field names follow the HF ``HubertConfig`` / released ``config.json`` wherever one exists.
    """

    sample_rate: int = 24_000
    """Input sampling rate in Hz (24 kHz for MERT-v1)."""
    conv_dim: tuple[int, ...] = (512,) * 7
    """Output channels of each conv layer of the feature extractor."""
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    """Kernel size of each conv layer."""
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    """Stride of each conv layer (product 320 -> 75 Hz at 24 kHz)."""
    conv_bias: bool = False
    """Whether the feature-extractor convs have a bias (false in the released models)."""
    hidden_size: int = 768
    """Transformer width D."""
    num_hidden_layers: int = 12
    """Number of transformer layers N."""
    num_attention_heads: int = 12
    """Attention heads per layer (D must be divisible by it)."""
    intermediate_size: int = 3072
    """FFN inner width."""
    hidden_dropout: float = 0.1
    """Dropout on residual branches and after the encoder input LayerNorm."""
    attention_dropout: float = 0.1
    """Dropout on the attention probabilities."""
    activation_dropout: float = 0.0
    """Dropout after the FFN activation."""
    feat_proj_dropout: float = 0.1
    """Dropout after the feature projection (fairseq ``dropout_input``)."""
    layerdrop: float = 0.05
    """Probability of skipping a whole transformer layer in training."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm (and the conv GroupNorm)."""
    num_conv_pos_embeddings: int = 128
    """Kernel size of the positional conv embedding."""
    num_conv_pos_embedding_groups: int = 16
    """Groups of the positional conv embedding."""
    do_stable_layer_norm: bool = False
    """Pre-LN layout (330M) if true, post-LN (95M) if false."""
    feature_grad_mult: float = 0.1
    """Gradient scale into the conv feature extractor (0 freezes it, 1 leaves it unscaled)."""
    conv_frozen_layers: int = 0
    """The first N conv layers keep their initial weights in training (``requires_grad`` off: their backward is never
    computed). 0 is the reference (every layer trains, at ``feature_grad_mult``). A documented deviation for short CPU
    runs: the random high-rate layers stay a random filterbank, whose features are strong timbre features (Pons &
    Serra, ICASSP 2019), and they are the costliest part of the backward pass."""
    attention_relax: float = -1.0
    """PB-relax constant of the released 330M config. Accepted and ignored: ``(a/c - max(a/c)) * c`` is
    ``a - max(a)`` and softmax is shift-invariant, so it is a mathematical no-op (we keep softmax in fp32)."""
    deepnorm: bool = False
    """DeepNorm residual scaling alpha=(2N)^(1/4) and init scaling beta=(8N)^(-1/4); post-LN only."""
    do_normalize: bool = False
    """Normalise each input clip to zero mean / unit variance, ``(x - mean) / sqrt(var + 1e-7)``.
    Pretraining used raw audio; released checkpoints set it in ``preprocessor_config.json``."""
    hf_extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Keys of a loaded HF ``config.json`` that we do not model, kept so ``save_pretrained`` writes them back."""

    def __post_init__(self) -> None:
        self.conv_dim, self.conv_kernel, self.conv_stride = (
            tuple(int(v) for v in x) for x in (self.conv_dim, self.conv_kernel, self.conv_stride)
        )
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)) or not self.conv_dim:
            raise ConfigError("conv_dim, conv_kernel and conv_stride must be non-empty and of equal length")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ConfigError("hidden_size must be divisible by num_conv_pos_embedding_groups")
        if self.deepnorm and self.do_stable_layer_norm:
            raise ConfigError("deepnorm requires the post-LN layout (do_stable_layer_norm=False)")
        for name in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.conv_frozen_layers <= len(self.conv_dim):
            raise ConfigError(f"conv_frozen_layers must be in [0, {len(self.conv_dim)}], got {self.conv_frozen_layers}")

    # ------------------------------------------------------------------ derived quantities
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def total_stride(self) -> int:
        """Samples per output frame (320 for the released models)."""
        return math.prod(self.conv_stride)

    @property
    def frame_rate(self) -> float:
        """Output frames per second (75.0 at 24 kHz)."""
        return self.sample_rate / self.total_stride

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame of the conv stack (400 for the released models)."""
        rf = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            rf = (rf - 1) * s + k
        return rf

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` input samples: ``floor((L - k) / s) + 1`` per conv layer.

        Examples (24 kHz): 120000 -> 374, 122880 -> 383, 720000 -> 2249, 72000 -> 224.
        """
        n = int(num_samples)
        for k, s in zip(self.conv_kernel, self.conv_stride):
            if n < k:
                return 0
            n = (n - k) // s + 1
        return n

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> MERTConfig:
        """Build a preset by name (``mert-tiny``, ``mert-95m``, ``mert-330m``) with field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown MERT preset {name!r}; known: {sorted(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown MERTConfig field(s) {unknown}")
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------ HF config.json
    def to_hf_dict(self) -> dict[str, Any]:
        """The released-layout ``config.json`` (loadable by ``transformers.HubertConfig``)."""
        from mert.model.hf import config_to_hf_dict

        return config_to_hf_dict(self)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> MERTConfig:
        """Parse a released (or HF Hubert) ``config.json`` dict; unsupported variants raise :class:`ConfigError`."""
        from mert.model.hf import config_from_hf_dict

        return config_from_hf_dict(cls, d)


_95M: dict[str, Any] = {}  # the dataclass defaults are the 95M model
PRESETS: dict[str, dict[str, Any]] = {
    "mert-tiny": dict(
        conv_dim=(32,) * 7,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    ),
    "mert-95m": _95M,
    "mert-330m": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        do_stable_layer_norm=True,
        feature_grad_mult=1.0,
        attention_relax=32.0,
    ),
}
"""Preset name -> field overrides of the dataclass defaults (which are the 95M model)."""
